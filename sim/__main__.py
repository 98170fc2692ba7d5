"""``python -m sim`` runs the ``ringflow`` command."""

from .cli import run

run()
