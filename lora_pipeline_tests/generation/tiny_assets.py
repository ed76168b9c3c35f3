"""Models and LoRA files for the generation, training and evaluation tests, built on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_pipeline.training.kohya_format import (
    UNET_TARGET_MODULES,
    kohya_metadata,
    peft_unet_to_kohya,
    save_kohya_lora,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def write_random_lora(sd_folder: Path, path: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """A kohya LoRA for the tiny UNet with random down AND up weights (up × `scale`).

    peft's default init leaves lora_up at zero, which would change nothing; random weights make
    a LoRA whose effect is certain, and scale=0 one whose effect is certainly nothing.
    """
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(
            LoraConfig(
                r=4, lora_alpha=4, init_lora_weights=False, target_modules=UNET_TARGET_MODULES
            )
        )
    state = {
        key: value * scale if ".lora_B." in key else value
        for key, value in get_peft_model_state_dict(unet).items()
    }
    metadata = kohya_metadata(
        base_model_name=sd_folder.name,
        rank=4,
        alpha=4.0,
        learning_rate=1e-4,
        steps=0,
        epochs=0,
        batch_size=1,
        resolution=64,
        num_images=0,
        seed=seed,
        tag_frequency={},
        dataset_hash="",
        base_model_hash="",
        trigger_word="",
        title=path.stem,
    )
    save_kohya_lora(path, peft_unet_to_kohya(state, alpha=4.0), metadata)
    return path
