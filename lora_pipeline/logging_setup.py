"""Keep library chatter (download progress bars, torchvision fallbacks) off the console."""

from __future__ import annotations

from lora_pipeline.config import quiet_library_defaults


def quiet_ml_libraries() -> None:
    quiet_library_defaults()
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
