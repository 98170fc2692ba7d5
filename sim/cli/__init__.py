"""The ``ringflow`` command line: one module per command, and what they share."""

from .ringflow import build_parser as build_parser
from .ringflow import main as main
