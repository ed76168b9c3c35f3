"""`lora-pipeline`: set up, add projects and characters, ingest, review, releases, status, demo, ui.

Every expected failure (unknown character, bad slug, missing file, unreachable URL, a full
disk) prints one line on stderr and exits with status 2; anything else is a bug: one line with
an error id, exit status 1, and the traceback in `<home>/logs/cli.log` under that id. Each
command group lives in its own module with a `register(subcommands)` that adds its parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lora_pipeline.cli import (
    clusters,
    deploy,
    home,
    ingest,
    profiles,
    projects,
    releases,
    review,
    runs,
)
from lora_pipeline.cli.common import CliError
from lora_pipeline.config import SettingsError, home_from_environment
from lora_pipeline.errors import (
    DISK_FULL,
    PipelineError,
    disk_full,
    error_log,
    record_unexpected,
    user_message,
)
from lora_pipeline.registry.errors import RegistryError

COMMAND_GROUPS = (home, projects, profiles, ingest, review, runs, releases, clusters, deploy)
ERROR_LOG = "cli.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CliError, RegistryError, SettingsError)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from lora_pipeline.demo import DemoFailed
    from lora_pipeline.media.download import DownloadFailed
    from lora_pipeline.media.images import InvalidImageError
    from lora_pipeline.media.store import UnsafePathError
    from lora_pipeline.media.uploads import UploadError
    from lora_pipeline.media.video import VideoError
    from lora_pipeline.review.app import ReviewAppError

    # Every PipelineError is expected: its message is one line fit for the user.
    return EXPECTED_ERRORS + (
        PipelineError,
        ReviewAppError,
        DemoFailed,
        DownloadFailed,
        InvalidImageError,
        UnsafePathError,
        UploadError,
        VideoError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except _expected_errors() as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if disk_full(exc):
            print(f"error: {DISK_FULL}", file=sys.stderr)
            return 2
        print(f"error: {_record_bug(exc, args.command)}", file=sys.stderr)
        return 1
    return 0


def _record_bug(error: Exception, command: str) -> str:
    """The catch-all's one line; the traceback goes to the home's log under the line's id."""
    # The home as the environment names it: the settings themselves may be what failed.
    home = home_from_environment()
    try:
        log = error_log(home, ERROR_LOG)
        error_id = record_unexpected(log, error, f"lora-pipeline {command}")
        for handler in log.handlers:
            handler.close()
    except OSError:  # no log to write (the home is unwritable): the line still says what failed
        return f"unexpected {user_message(error)} (no log written under {home})"
    return (
        f"unexpected {user_message(error)} (error {error_id}; the traceback is in "
        f"{home / 'logs' / ERROR_LOG})"
    )
