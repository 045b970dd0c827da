"""Where the ``facebridge`` command puts the traceback of an unexpected error.

The user sees one line naming the log file; the traceback is appended to
``$XDG_STATE_HOME/facebridge/cli-errors.log`` (default ``~/.local/state``), or to the temp
directory when that cannot be written.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

LOG_NAME = "cli-errors.log"
EXIT_UNEXPECTED = 1
MESSAGE_CHARS = 200  # of the message's first line on stderr; the log has all of it


def log_dirs() -> list[Path]:
    """Candidate folders for the log, best first."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return [Path(state) / "facebridge", Path(tempfile.gettempdir()) / f"facebridge-{os.getuid()}"]


def write_traceback(exc: BaseException, *, argv: Sequence[str]) -> Path | None:
    """Append ``exc``'s traceback (with the time and the command line) to the log; its path, or
    None when no candidate folder can be written."""
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    text = "".join(traceback.format_exception(exc))
    entry = f"--- {stamp} facebridge {' '.join(argv)}\n{text}\n"
    for folder in log_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / LOG_NAME
            with path.open("a", encoding="utf-8") as handle:
                handle.write(entry)
            return path
        except OSError:
            continue
    return None


def report_unexpected(exc: BaseException, *, argv: Sequence[str]) -> int:
    """One line on stderr (what failed, where the traceback is); the exit status."""
    path = write_traceback(exc, argv=argv)
    where = f"traceback in {path}" if path is not None else "no log could be written"
    first = (str(exc).strip().splitlines() or [""])[0][:MESSAGE_CHARS]
    print(f"error: unexpected {type(exc).__name__}: {first} ({where})", file=sys.stderr)
    return EXIT_UNEXPECTED
