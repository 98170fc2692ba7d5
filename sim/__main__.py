"""``python -m sim`` runs the ``ringflow`` command."""

from .cli.ringflow import run

run()
