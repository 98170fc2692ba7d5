"""Where ``ringflow run`` and ``ringflow node`` write their report: the path checked before
the run, and somewhere else when writing there fails after it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from actors import RingflowError
from topology import CheckpointSettings

from ..report import Report, write_report


class ReportPathError(RingflowError):
    """The report cannot be written where it is to go."""


def check_report_path(path: Path) -> None:
    """Make sure the report can be written to ``path`` before anything runs; create its
    folder, leave no file behind.

    Raises:
        ReportPathError: It is a folder, its folder cannot be made, or it cannot be written.
    """
    hint = "choose another path with --report"
    try:
        folder = path.is_dir()
    except OSError as exc:  # a name too long, say
        raise ReportPathError(
            f"cannot write the report to {path}: {exc.strerror}; {hint}"
        ) from None
    if folder:
        raise ReportPathError(f"cannot write the report to {path}: it is a folder; {hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ReportPathError(
            f"cannot write the report to {path}: a part of {path.parent} is a file, not a "
            f"folder; {hint}"
        ) from None
    except OSError as exc:
        raise ReportPathError(
            f"cannot write the report to {path}: its folder {path.parent} cannot be created "
            f"({exc.strerror}); {hint}"
        ) from None
    try:
        existed = path.exists()
        with path.open("a"):
            pass
    except OSError as exc:
        raise ReportPathError(
            f"cannot write the report to {path}: {exc.strerror}; {hint}"
        ) from None
    if not existed:
        path.unlink(missing_ok=True)


def save_report(
    report: Report, path: Path, checkpoints: CheckpointSettings | None, name: str
) -> tuple[Path | None, str | None]:
    """Write the report to ``path``; when that fails (a full disk, a path taken meanwhile),
    to the state folder, else to a temporary file.

    Returns:
        Where it was written (None if nowhere), and why not to ``path`` (None if it was).
    """
    try:
        write_report(report, path)
        return path, None
    except OSError as exc:
        problem = f"cannot write the report to {path}: {exc.strerror or exc}"
    if checkpoints is not None:
        fallback = checkpoints.store.path.parent / f"report-{name}-seed{report.seed}.json"
        try:
            write_report(report, fallback)
            return fallback, problem
        except OSError:
            pass
    try:
        handle, temporary = tempfile.mkstemp(prefix=f"ringflow-{name}-", suffix=".json")
        os.close(handle)
        write_report(report, Path(temporary))
        return Path(temporary), problem
    except OSError:
        return None, problem
