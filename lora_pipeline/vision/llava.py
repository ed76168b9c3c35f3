"""LLaVA identification and captioning through `transformers`: a local folder or a hub id,
batched, on the GPU when there is one.

The model and processor are loaded once per process (they are large) and kept until
`release_models()`. Batches are left-padded, so every prompt of a batch ends where generation
starts, and decoding is greedy: the same image gets the same answer, alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from lora_pipeline.config import torch_device
from lora_pipeline.errors import first_line
from lora_pipeline.vision.captioner import (
    CAPTION_MAX_CHARS,
    CAPTION_PROMPT,
    CaptionerError,
    clean_caption,
)
from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identification,
    IdentifierError,
    identification_question,
    parse_character_answer,
    short_name,
)
from lora_pipeline.vision.model_cache import ModelCache

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 48
# A caption list of 20-odd parts; clean_caption cuts what runs past CAPTION_MAX_CHARS.
DEFAULT_CAPTION_TOKENS = 96
_FALLBACK_TEMPLATE = "USER: {image}\n{question}\nASSISTANT:"


def _from_pretrained(model_id: str, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    # Half precision on a GPU (the 7B model then fits in 15 GB); the CPU computes in float32.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = LlavaForConditionalGeneration.from_pretrained(model_id, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise IdentifierError(f"cannot load LLaVA model {model_id!r}: {first_line(exc)}") from exc
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model.to(device).eval(), processor


# (model, processor) per folder or hub id and device, shared by identification and captions.
MODELS: ModelCache[tuple[Any, Any]] = ModelCache(_from_pretrained)


def release_models() -> None:
    """Drop every loaded LLaVA so its memory (VRAM) can go to training."""
    MODELS.clear()


class _LlavaModel:
    """A LLaVA checkpoint asked one question about many images, a batch at a time."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        if not model.strip():
            raise ValueError(f"{type(self).__name__} needs a model folder or hub id")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        self.model_id = model
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.name = short_name("llava", model)

    def _ask(self, question: str, images: Sequence[Image.Image]) -> list[str]:
        """The model's answer to the question for each image, in order."""
        if not images:
            return []
        model, processor = MODELS.get(self.model_id, torch_device(self.device))
        prompt = _prompt(processor, question)
        answers: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            answers += self._generate(model, processor, prompt, batch)
        return answers

    def _generate(
        self, model: Any, processor: Any, prompt: str, images: list[Image.Image]
    ) -> list[str]:
        import torch

        inputs = processor(
            images=images, text=[prompt] * len(images), padding=True, return_tensors="pt"
        )
        inputs = {
            key: value.to(model.device, dtype=model.dtype)
            if key == "pixel_values"
            else value.to(model.device)
            for key, value in inputs.items()
        }
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [
            text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)
        ]


class LlavaIdentifier(_LlavaModel):
    """Asks a LLaVA checkpoint which of the candidates each image shows."""

    def identify(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> list[Identification]:
        answers = self._ask(identification_question(candidates), images)
        return [Identification(parse_character_answer(a, candidates), a) for a in answers]


class LlavaCaptioner(_LlavaModel):
    """Captions images for LoRA training with a LLaVA checkpoint (the vlm caption strategy).

    Shares the loaded model with LlavaIdentifier; answers are cleaned into one caption line.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = DEFAULT_CAPTION_TOKENS,
        prompt: str = CAPTION_PROMPT,
        max_chars: int = CAPTION_MAX_CHARS,
    ) -> None:
        super().__init__(model, device, batch_size, max_new_tokens)
        self.prompt = prompt
        self.max_chars = max_chars

    def caption(self, image: Image.Image) -> str:
        return self.caption_many([image])[0]

    def caption_many(self, images: Sequence[Image.Image]) -> list[str]:
        try:
            answers = self._ask(self.prompt, images)
        except IdentifierError as error:
            raise CaptionerError(str(error)) from None
        return [
            clean_caption(answer, echo=self.prompt, max_chars=self.max_chars) for answer in answers
        ]


def _prompt(processor: Any, question: str) -> str:
    """The model's own chat template around one image and the question, when it has one."""
    if getattr(processor, "chat_template", None):
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return str(processor.apply_chat_template(conversation, add_generation_prompt=True))
    image_token = getattr(processor, "image_token", None) or "<image>"
    return _FALLBACK_TEMPLATE.format(image=image_token, question=question)
