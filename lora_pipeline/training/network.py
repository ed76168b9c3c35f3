"""Which modules a kohya LoRA adapts, and how the adapters are added, saved and restored.

kohya's `networks.lora` walks the model and adapts every `Linear` and `Conv2d` inside certain
container modules: `Transformer2DModel` in the UNet (attention, feed-forward, proj_in/out),
`CLIPAttention` and `CLIPMLP` in the text encoders, and with LoCon (`conv_dim`) also
`ResnetBlock2D`, `Downsample2D` and `Upsample2D`. Linear layers and 1×1 convolutions get the
network rank and alpha, 3×3 convolutions the conv rank and alpha. Following the same walk gives
exactly kohya's module names, which is what lets ComfyUI's LoraLoader apply every key.

The adapters themselves are peft LoRA layers (`lora_A` = kohya's `lora_down`, `lora_B` =
`lora_up`), so the training loop is plain diffusers + peft. `kohya_tensors` writes them under
kohya's keys and `load_kohya_tensors` reads such a file back into them (a retrain that starts
from an earlier LoRA).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lora_pipeline.errors import PipelineError

UNET_LORA_CONTAINERS = ("Transformer2DModel",)
UNET_CONV_CONTAINERS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_CONTAINERS = ("CLIPAttention", "CLIPMLP")
ADAPTER_NAME = "default"
# How many names an error message shows of each kind of mismatch.
_SHOWN = 2


class LoraMismatchError(PipelineError, ValueError):
    """A kohya LoRA file whose modules or shapes are not those of the network."""


@dataclass(frozen=True)
class LoraTarget:
    """One adapted module: its path inside the model, its kohya name, rank and alpha."""

    path: str
    kohya_name: str
    rank: int
    alpha: float


def _is_3x3_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)


def _kohya_path(path: str, text_model: bool) -> str:
    # transformers 5 dropped CLIPTextModel's `text_model.` level; kohya's names (and every tool
    # that reads them) still carry it.
    if text_model and not path.startswith("text_model."):
        path = "text_model." + path
    return path.replace(".", "_")


def find_targets(
    model: nn.Module,
    prefix: str,
    containers: Sequence[str],
    rank: int,
    alpha: float,
    conv_rank: int = 0,
    conv_alpha: float = 1.0,
    text_model: bool = False,
) -> list[LoraTarget]:
    """The modules kohya adapts in `model`, in kohya's order, named `<prefix><path>`."""
    targets: dict[str, LoraTarget] = {}
    for name, container in model.named_modules():
        if type(container).__name__ not in containers:
            continue
        for child_name, child in container.named_modules():
            if not isinstance(child, nn.Linear | nn.Conv2d):
                continue
            path = f"{name}.{child_name}" if name else child_name
            if _is_3x3_conv(child):
                if not conv_rank:
                    continue
                child_rank, child_alpha = conv_rank, conv_alpha
            else:
                child_rank, child_alpha = rank, alpha
            kohya_name = prefix + _kohya_path(path, text_model)
            targets.setdefault(path, LoraTarget(path, kohya_name, child_rank, float(child_alpha)))
    return list(targets.values())


def unet_targets(
    unet: nn.Module, rank: int, alpha: float, conv_rank: int = 0, conv_alpha: float = 1.0
) -> list[LoraTarget]:
    containers = UNET_LORA_CONTAINERS + (UNET_CONV_CONTAINERS if conv_rank else ())
    return find_targets(unet, "lora_unet_", containers, rank, alpha, conv_rank, conv_alpha)


def text_encoder_targets(
    text_encoder: nn.Module, prefix: str, rank: int, alpha: float
) -> list[LoraTarget]:
    """`prefix` is `lora_te_` for SD1.x, `lora_te1_` / `lora_te2_` for SDXL's two encoders."""
    return find_targets(text_encoder, prefix, TEXT_ENCODER_CONTAINERS, rank, alpha, text_model=True)


def add_lora(model: nn.Module, targets: Sequence[LoraTarget]) -> list[nn.Parameter]:
    """Wrap every target in a peft LoRA layer; return the new (trainable) parameters.

    peft initialises lora_A with Kaiming-uniform and lora_B with zeros, as kohya does, so the
    model's output is unchanged until the first step. The draws come from torch's global RNG:
    callers that want reproducible runs seed it (the trainer forks it).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        raise ValueError("no module to adapt: the model has none of kohya's target modules")
    base = targets[0]
    config = LoraConfig(
        r=base.rank,
        lora_alpha=base.alpha,
        target_modules=[t.path for t in targets],
        rank_pattern={re.escape(t.path): t.rank for t in targets if t.rank != base.rank},
        alpha_pattern={re.escape(t.path): t.alpha for t in targets if t.alpha != base.alpha},
    )
    model.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    parameters = []
    for target in targets:
        layer = model.get_submodule(target.path)
        for part in (layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]):
            part.requires_grad_(True)
            parameters.extend(part.parameters())
    return parameters


def lora_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights by parameter name: what a resumable state saves and restores."""
    return {name: p for name, p in model.named_parameters() if ".lora_" in name}


def kohya_tensors(
    model: nn.Module, targets: Iterable[LoraTarget], dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """The adapters of `model` under kohya's keys: lora_down / lora_up weights and `.alpha`."""
    tensors: dict[str, torch.Tensor] = {}
    for target in targets:
        layer = model.get_submodule(target.path)
        down = layer.lora_A[ADAPTER_NAME].weight.detach()
        up = layer.lora_B[ADAPTER_NAME].weight.detach()
        for part, tensor in (("lora_down.weight", down), ("lora_up.weight", up)):
            tensor = tensor.to(dtype=dtype)
            # Meta tensors (a model built without weights, to check names) have nothing to copy.
            tensors[f"{target.kohya_name}.{part}"] = (
                tensor if tensor.is_meta else tensor.cpu().contiguous()
            )
        tensors[f"{target.kohya_name}.alpha"] = torch.tensor(target.alpha, dtype=dtype)
    return tensors


def restore_lora_parameters(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """Copy saved adapter weights back into `model`; the names must match exactly."""
    current = lora_parameters(model)
    if set(current) != set(saved):
        missing = sorted(set(current) ^ set(saved))[:3]
        raise ValueError(f"the saved adapter does not match the model (e.g. {missing})")
    with torch.no_grad():
        for name, parameter in current.items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))


def _mismatch(file_only: list[str], network_only: list[str], shapes: list[str]) -> str:
    problems = []
    for keys, where in ((file_only, "only in the file"), (network_only, "only in the network")):
        if keys:
            problems.append(f"{len(keys)} tensor(s) {where} (e.g. {', '.join(keys[:_SHOWN])})")
    if shapes:
        problems.append(f"{len(shapes)} shape(s) differ (e.g. {'; '.join(shapes[:_SHOWN])})")
    return (
        "the LoRA does not match the network (another rank, base model or set of adapted "
        "modules?): " + "; ".join(problems)
    )


def load_kohya_tensors(
    adapted: Sequence[tuple[nn.Module, Sequence[LoraTarget]]], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Copy a kohya file's adapters into the peft layers of `adapted` (each model with the
    targets `add_lora` wrapped in it): the inverse of `kohya_tensors`.

    lora_down goes to lora_A and lora_up to lora_B. The file means up @ down × alpha / rank; a
    module whose file alpha differs from the network's gets lora_B scaled by file alpha /
    network alpha, so it means the same here (a file without `.alpha` has alpha = rank, as in
    kohya). Every key and shape is checked before anything is copied: LoraMismatchError.
    """
    layers: dict[str, tuple[LoraTarget, torch.Tensor, torch.Tensor]] = {}
    expected: dict[str, torch.Tensor] = {}
    for model, targets in adapted:
        for target in targets:
            layer = model.get_submodule(target.path)
            down, up = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
            layers[target.kohya_name] = (target, down, up)
            expected[f"{target.kohya_name}.lora_down.weight"] = down
            expected[f"{target.kohya_name}.lora_up.weight"] = up
    alphas = {f"{name}.alpha" for name in layers}
    file_only = sorted(set(tensors) - set(expected) - alphas)
    network_only = sorted(set(expected) - set(tensors))
    shapes = [
        f"{key}: {list(tensors[key].shape)} in the file, {list(weight.shape)} in the network"
        for key, weight in sorted(expected.items())
        if key in tensors and tensors[key].shape != weight.shape
    ]
    if file_only or network_only or shapes:
        raise LoraMismatchError(_mismatch(file_only, network_only, shapes))
    with torch.no_grad():
        for name, (target, down, up) in layers.items():
            scale = _alpha_scale(tensors.get(f"{name}.alpha"), target)
            down.copy_(tensors[f"{name}.lora_down.weight"].to(down.device, down.dtype))
            up.copy_(tensors[f"{name}.lora_up.weight"].to(up.device, torch.float32) * scale)


def _alpha_scale(file_alpha: torch.Tensor | None, target: LoraTarget) -> float:
    """file alpha / network alpha; exactly 1 when they agree up to the file's precision."""
    if file_alpha is None:
        return target.rank / target.alpha
    if torch.tensor(target.alpha, dtype=file_alpha.dtype) == file_alpha:
        return 1.0
    return float(file_alpha) / target.alpha
