"""Exceptions of the registry: each one carries a single readable line for the user."""

from __future__ import annotations

from lora_pipeline.errors import PipelineError


class RegistryError(PipelineError):
    """Base class: `str(error)` is a one-line message fit to show to a user."""


class NotFoundError(RegistryError):
    """A project, character, image or other row named by the caller does not exist."""


class InvalidInputError(RegistryError):
    """A value given by the caller breaks a rule (slug format, unknown category, range...)."""


class ConflictError(RegistryError):
    """The change collides with the current state: a duplicate, or a decision already taken."""


class GateError(ConflictError):
    """A release the evaluation gate has not passed cannot be approved or made active."""
