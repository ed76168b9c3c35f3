"""The one base of every error the pipeline raises on purpose.

A `PipelineError` is something a user can act on: `str(error)` is one readable line, and the CLI
and the review app print `user_message(error)` instead of a traceback. Each domain error also
keeps the built-in base it always had (ValueError, RuntimeError, ...) so existing callers that
catch those still do.
"""

from __future__ import annotations

import errno
import logging
import secrets
from pathlib import Path


class PipelineError(Exception):
    """Base class: `str(error)` is a one-line message fit to show to a user."""


def first_line(error: BaseException) -> str:
    """The first line of an error, for a one-line message (the type when it says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def user_message(error: BaseException) -> str:
    """What to tell the user about an error: its first line, prefixed by the type when the
    error was not raised on purpose (so an unexpected KeyError does not read as a sentence)."""
    line = first_line(error)
    if isinstance(error, PipelineError):
        return line
    return f"{type(error).__name__}: {line}" if line != type(error).__name__ else line


DISK_FULL = "the disk is full (free some space and try again)"
# SQLite's result code for "database or disk is full" (sqlite3 gives it as sqlite_errorcode).
_SQLITE_FULL = 13


def disk_full(error: BaseException) -> bool:
    """Whether a full disk is what failed: an ENOSPC (or over-quota) OSError, or SQLite's
    "database or disk is full", anywhere in the chain of causes (an upload error, a SQLAlchemy
    error and a re-raise all keep the original underneath)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_message(error: OSError) -> str:
    """One line for a failed read or write; a full disk says so and what to do. The one
    wording of a full disk, for the CLI, the review app and a failed source alike."""
    if disk_full(error):
        return DISK_FULL
    return error.strerror or str(error)


LOG_DIR = "logs"


def error_log(home: Path, file_name: str) -> logging.Logger:
    """A logger of its own (not in logging's global tree, so no library's configuration
    reaches it) that writes to `<home>/logs/<file_name>`, opened at the first error."""
    path = Path(home) / LOG_DIR / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.Logger(f"lora_pipeline.{Path(file_name).stem}", logging.INFO)
    logger.addHandler(handler)
    return logger


def record_unexpected(log: logging.Logger, error: BaseException, where: str) -> str:
    """Log an unexpected error's traceback under a new short id, the one the user is shown."""
    error_id = secrets.token_hex(6)
    log.error("error %s on %s", error_id, where, exc_info=error)
    return error_id
