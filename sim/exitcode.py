"""The exit codes of the ``ringflow`` command, one enum for every command.

They live outside :mod:`sim.cli` because the tap client (:mod:`sim.tap`) and the log reader
(:mod:`sim.logs`) answer with them too, and :mod:`sim.cli` imports both.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What ``ringflow`` exits with (``docs/operations.md`` lists them per command)."""

    OK = 0
    """The command did what it was asked; a run completed and every invariant held."""
    FAILED = 1
    """The run completed but an invariant failed, an actor crashed or the run stalled, or the
    report could not be written where asked (it was saved elsewhere, and its path printed);
    a tap could not reach its node or was refused; a followed log stopped without ending."""
    USAGE = 2
    """Bad input: a malformed topology, bad arguments, nothing to read. Nothing was run."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (SIGINT), 128 + 2; a run wrote a partial report."""
    TERMINATED = 143
    """Stopped by SIGTERM (``docker stop``, a process manager): as Ctrl-C, 128 + 15."""
