"""Tiny randomly initialised vision models, saved like real ones, for tests and benchmarks.

They load through exactly the code that loads a real LLaVA or CLIP checkpoint (from_pretrained
on a folder), so the tests exercise the real path without downloading anything. Recipes:
shared/reference/tiny-models.md. Their answers are noise; their shapes and plumbing are real.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lora_pipeline.files import atomic_folder

# A plain USER/ASSISTANT template, the shape llava-1.5 checkpoints use.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_TRAINING_TEXT = [
    "USER: <image> Which characters appear in this picture? ASSISTANT: Aiko and Kenji.",
    "The answer is a JSON list of names, or an empty list [] when no one is there.",
    "teal hair, yellow raincoat, spiky black hair, green school uniform, none, nobody",
]
_IMAGE_SIDE = 32
_PATCH = 8


def _tiny_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = ByteLevelDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


def _save_atomically(folder: Path, save) -> Path:  # save: Callable[[Path], None]
    """Build into a sibling temporary folder and rename it, so a crash leaves no half model."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    with atomic_folder(folder, replace=False) as scratch:
        save(scratch)
    return folder


def _vision_config(projection_dim: int):  # -> CLIPVisionConfig
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_IMAGE_SIDE,
        patch_size=_PATCH,
        projection_dim=projection_dim,
    )


def _image_processor():  # -> CLIPImageProcessorPil
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": _IMAGE_SIDE},
        crop_size={"height": _IMAGE_SIDE, "width": _IMAGE_SIDE},
    )


def build_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A LLaVA of about 300 KB (CLIP vision tower + Llama text model) with its processor."""
    import torch
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    def save(target: Path) -> None:
        tokenizer = _tiny_tokenizer()
        processor = LlavaProcessor(
            image_processor=_image_processor(),
            tokenizer=tokenizer,
            patch_size=_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
        config = LlavaConfig(
            vision_config=_vision_config(projection_dim=32),
            text_config=LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        torch.manual_seed(seed)
        LlavaForConditionalGeneration(config).save_pretrained(target)
        processor.save_pretrained(target)

    return _save_atomically(folder, save)


def build_tiny_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A CLIP vision tower with projection (about 100 KB) and its image processor."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    def save(target: Path) -> None:
        torch.manual_seed(seed)
        CLIPVisionModelWithProjection(_vision_config(projection_dim=16)).save_pretrained(target)
        _image_processor().save_pretrained(target)

    return _save_atomically(folder, save)


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A full CLIP (text and vision towers, about 250 KB) with a CLIPProcessor, for CLIP scores.

    The tokenizer is the byte-level CLIP tokenizer of the tiny Stable Diffusion (77 positions),
    so prompts get the start and end tokens the text tower pools on, as with a real CLIP.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from lora_pipeline.tiny_models import tiny_clip_text_config, tiny_clip_tokenizer

    def save(target: Path) -> None:
        words = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=target))
        try:
            tokenizer = tiny_clip_tokenizer(words)
        finally:
            shutil.rmtree(words, ignore_errors=True)
        text_config = tiny_clip_text_config(tokenizer, projection_dim=16)
        config = CLIPConfig(
            text_config=text_config.to_dict(),
            vision_config=_vision_config(projection_dim=16).to_dict(),
            projection_dim=16,
        )
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(target)
        CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(
            target
        )

    return _save_atomically(folder, save)
