"""The review app's pages and actions, one module per tab.

Pages are plain functions (Starlette runs them in its thread pool, so the registry's blocking
calls never stall the event loop); actions are coroutines that parse the form, check its CSRF
token (`csrf_protected`) and then do their registry work in the thread pool. Every action
answers JSON to the page's script (`Accept: application/json`) and a redirect (or the page
with its error) to a plain form post, so the app works without JavaScript too.
"""

from __future__ import annotations

from lora_pipeline.review.views.approve import (
    approve_image,
    approve_page,
    image_details,
    image_file,
    image_thumbnail,
    reject_image,
    set_reviewer,
)
from lora_pipeline.review.views.characters import (
    accept_suggestion,
    characters_page,
    dismiss_suggestion,
)
from lora_pipeline.review.views.clusters import (
    clusters_page,
    crop_file,
    crop_thumbnail,
    dismiss_cluster_action,
    label_cluster_action,
)
from lora_pipeline.review.views.common import ReviewContext, favicon, healthz, render, wants_json
from lora_pipeline.review.views.echo_brain import (
    echo_brain_accept,
    echo_brain_chat,
    echo_brain_enhance,
    echo_brain_page,
)
from lora_pipeline.review.views.gallery import gallery_page, gallery_view, ingest_output_action
from lora_pipeline.review.views.generate import (
    clear_stuck,
    generate_page,
    job_output,
    jobs_json,
    request_generation_action,
)
from lora_pipeline.review.views.ingest import ingest_action, ingest_page, retry_ingest_action
from lora_pipeline.review.views.releases import (
    eval_cell,
    eval_grid,
    release_action,
    releases_json,
    releases_page,
)
from lora_pipeline.review.views.state import state_json, training_sample
from lora_pipeline.review.views.tags import tag_images_action
from lora_pipeline.review.views.train import start_training, train_page, train_plan_json

__all__ = [
    "ReviewContext",
    "accept_suggestion",
    "approve_image",
    "approve_page",
    "characters_page",
    "clear_stuck",
    "clusters_page",
    "crop_file",
    "crop_thumbnail",
    "dismiss_cluster_action",
    "dismiss_suggestion",
    "echo_brain_accept",
    "echo_brain_chat",
    "echo_brain_enhance",
    "echo_brain_page",
    "eval_cell",
    "eval_grid",
    "favicon",
    "gallery_page",
    "gallery_view",
    "generate_page",
    "healthz",
    "image_details",
    "image_file",
    "image_thumbnail",
    "ingest_action",
    "ingest_output_action",
    "ingest_page",
    "job_output",
    "jobs_json",
    "label_cluster_action",
    "reject_image",
    "release_action",
    "releases_json",
    "releases_page",
    "render",
    "request_generation_action",
    "retry_ingest_action",
    "set_reviewer",
    "start_training",
    "state_json",
    "tag_images_action",
    "train_page",
    "train_plan_json",
    "training_sample",
    "wants_json",
]
