"""What every `lora-pipeline` command shares: the settings, the registry, typed arguments."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable

from lora_pipeline.config import Settings
from lora_pipeline.errors import PipelineError
from lora_pipeline.generation_settings import InvalidSettingError, Limit, parse_number
from lora_pipeline.registry.db import Registry, migrate

# What `add_subparsers()` returns; argparse does not export the type under a public name.
Subcommands = argparse._SubParsersAction


class CliError(PipelineError):
    """An expected failure: its message is printed as is."""


def settings() -> Settings:
    return Settings.current()


def login_name() -> str:
    """The reviewer a terminal decision is recorded under, unless --reviewer says otherwise."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def registry(current: Settings) -> Registry:
    migrate(current.database_url)
    return Registry(current.database_url)


def display_url(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def typed(label: str, limit: Limit) -> Callable[[str], int | float]:
    """An argparse type that parses a typed number with the shared parser (its message)."""

    def parse(text: str) -> int | float:
        try:
            return parse_number(text, label, limit)
        except InvalidSettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse
