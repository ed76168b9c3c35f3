"""The one base of every error the pipeline raises on purpose.

A `PipelineError` is something a user can act on: `str(error)` is one readable line, and the CLI
and the review app print `user_message(error)` instead of a traceback. Each domain error also
keeps the built-in base it always had (ValueError, RuntimeError, ...) so existing callers that
catch those still do.
"""

from __future__ import annotations


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
