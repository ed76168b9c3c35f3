"""Commands: every change to the registry goes through one of these functions.

Each command validates its input, raises a `RegistryError` subclass with a one-line message,
and flushes without committing: the caller's `Registry.session()` block is the transaction.
Changes that other processes may race on (reviews, job and release states) are conditional
UPDATEs checked by row count, and inserts that may race are tried inside a SAVEPOINT, so that
two reviewers, sensors or workers get one outcome and a clear message instead of a crash.

One module per entity; callers use this package (`commands.add_image(...)`).
"""

from __future__ import annotations

from lora_pipeline.registry.commands._validate import validate_slug, validate_trigger_word
from lora_pipeline.registry.commands.characters import (
    CHARACTER_SETTINGS,
    add_character,
    get_character,
    update_character,
    update_design_prompt,
)
from lora_pipeline.registry.commands.comfyui import assign_comfyui_output, record_comfyui_output
from lora_pipeline.registry.commands.datasets import record_dataset_version
from lora_pipeline.registry.commands.images import (
    REJECTION_CATEGORIES,
    add_image,
    approve_image,
    get_image,
    mark_feedback_regeneration,
    reject_image,
    reviewer_name,
    set_image_phash,
    stored_tags,
    tag_images,
)
from lora_pipeline.registry.commands.jobs import (
    create_generation_job,
    fail_jobs_of_ended_runs,
    fail_stuck_jobs,
    mark_job,
    record_job_output,
    reseed_job,
    set_job_prompt_id,
)
from lora_pipeline.registry.commands.profiles import (
    DEFAULT_PROFILE_NAME,
    PROFILE_FIELDS,
    add_profile,
    get_profile,
    register_checkpoint,
    set_project_checkpoint,
    update_profile,
    validate_workflow_template,
)
from lora_pipeline.registry.commands.projects import (
    LICENCE_FIELDS,
    PROJECT_SETTINGS,
    add_project,
    get_project,
    update_project_settings,
)
from lora_pipeline.registry.commands.releases import (
    checkpoint_key,
    record_eval,
    register_lora_release,
    select_release_file,
    set_release_status,
)
from lora_pipeline.registry.commands.sources import (
    SOURCE_FIELDS,
    add_frame,
    create_source,
    record_frame_identification,
    set_source_state,
)

__all__ = [
    "CHARACTER_SETTINGS",
    "DEFAULT_PROFILE_NAME",
    "LICENCE_FIELDS",
    "PROFILE_FIELDS",
    "PROJECT_SETTINGS",
    "REJECTION_CATEGORIES",
    "SOURCE_FIELDS",
    "add_character",
    "add_frame",
    "add_image",
    "add_profile",
    "add_project",
    "approve_image",
    "checkpoint_key",
    "create_generation_job",
    "create_source",
    "fail_jobs_of_ended_runs",
    "fail_stuck_jobs",
    "get_character",
    "get_image",
    "get_profile",
    "get_project",
    "mark_feedback_regeneration",
    "mark_job",
    "reseed_job",
    "assign_comfyui_output",
    "record_comfyui_output",
    "record_dataset_version",
    "record_eval",
    "record_frame_identification",
    "record_job_output",
    "register_checkpoint",
    "register_lora_release",
    "reject_image",
    "reviewer_name",
    "select_release_file",
    "set_image_phash",
    "stored_tags",
    "tag_images",
    "set_job_prompt_id",
    "set_project_checkpoint",
    "set_release_status",
    "set_source_state",
    "update_character",
    "update_design_prompt",
    "update_profile",
    "update_project_settings",
    "validate_slug",
    "validate_trigger_word",
    "validate_workflow_template",
]
