"""Module names and shapes of the adapters against kohya's, on the full architectures (meta
device: no weights), built from the configs the package ships for single-file checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lora_pipeline.model_configs import shipped_config
from lora_pipeline.training.network import (
    add_lora,
    kohya_tensors,
    text_encoder_targets,
    unet_targets,
)
from lora_pipeline_tests.generation.tiny_assets import DATA

LOCON_TSV = Path(__file__).resolve().parent / "data" / "kohya_sd15_locon_r4_modules.tsv"


def reference_modules(tsv: Path) -> dict[str, tuple[list[int], list[int]]]:
    with open(tsv, encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    return {
        row["module"]: (json.loads(row["lora_down_shape"]), json.loads(row["lora_up_shape"]))
        for row in rows
    }


def _unet(version: str) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(shipped_config(version) / "unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def _text_encoder(version: str, folder: str = "text_encoder") -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_pretrained(shipped_config(version) / folder)
    model_class = CLIPTextModelWithProjection if folder == "text_encoder_2" else CLIPTextModel
    with torch.device("meta"):
        return model_class(config)


def _kohya_file(version: str, conv_rank: int) -> dict[str, torch.Tensor]:
    unet, encoder = _unet(version), _text_encoder(version)
    targets = unet_targets(unet, 4, 4.0, conv_rank=conv_rank, conv_alpha=1.0)
    te_targets = text_encoder_targets(encoder, "lora_te_", 4, 4.0)
    with torch.device("meta"):
        add_lora(unet, targets)
        add_lora(encoder, te_targets)
    return {**kohya_tensors(unet, targets), **kohya_tensors(encoder, te_targets)}


def _assert_matches(tensors: dict[str, torch.Tensor], tsv: Path) -> None:
    expected = reference_modules(tsv)
    assert {key.split(".", 1)[0] for key in tensors} == set(expected)
    for module, (down_shape, up_shape) in expected.items():
        assert list(tensors[f"{module}.lora_down.weight"].shape) == down_shape, module
        assert list(tensors[f"{module}.lora_up.weight"].shape) == up_shape, module
        alpha = tensors[f"{module}.alpha"]
        assert alpha.shape == () and alpha.dtype == torch.float16
    assert len(tensors) == 3 * len(expected)


def test_sd15_unet_and_text_encoder_give_kohyas_264_modules() -> None:
    tensors = _kohya_file("sd15", conv_rank=0)
    _assert_matches(tensors, DATA / "kohya_sd15_lora_r4_modules.tsv")
    assert sum(k.startswith("lora_te_") for k in tensors) == 3 * 72
    assert float(tensors["lora_unet_mid_block_attentions_0_proj_in.alpha"]) == 4.0


def test_locon_adds_kohyas_convolutions_350_modules() -> None:
    tensors = _kohya_file("sd15", conv_rank=4)
    _assert_matches(tensors, LOCON_TSV)
    # 3×3 convolutions take the conv alpha; time_emb_proj (linear) and the 1×1 shortcut the
    # network alpha, as in kohya's networks.lora
    assert float(tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.0
    assert float(tensors["lora_unet_down_blocks_1_resnets_0_conv_shortcut.alpha"]) == 4.0
    assert float(tensors["lora_unet_up_blocks_0_resnets_0_time_emb_proj.alpha"]) == 4.0


def test_conv_rank_differs_from_the_network_rank() -> None:
    unet = _unet("sd15")
    targets = unet_targets(unet, 8, 8.0, conv_rank=2, conv_alpha=1.0)
    by_name = {t.kohya_name: t for t in targets}
    assert by_name["lora_unet_down_blocks_0_resnets_0_conv1"].rank == 2
    assert by_name["lora_unet_down_blocks_0_downsamplers_0_conv"].rank == 2
    assert by_name["lora_unet_down_blocks_1_resnets_0_conv_shortcut"].rank == 8
    with torch.device("meta"):
        add_lora(unet, targets)
    tensors = kohya_tensors(unet, targets)
    assert list(tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape) == [
        2,
        320,
        3,
        3,
    ]
    assert list(
        tensors[
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"
        ].shape
    ) == [1280, 8]


def test_sdxl_has_kohyas_module_counts_and_te1_te2_prefixes() -> None:
    unet = _unet("sdxl")
    assert len(unet_targets(unet, 4, 4.0)) == 722  # kohya: "create LoRA for U-Net: 722 modules"
    first = text_encoder_targets(_text_encoder("sdxl"), "lora_te1_", 4, 4.0)
    second = text_encoder_targets(_text_encoder("sdxl", "text_encoder_2"), "lora_te2_", 4, 4.0)
    assert (len(first), len(second)) == (72, 192)
    assert first[0].kohya_name.startswith("lora_te1_text_model_encoder_layers_0_")
    assert second[-1].kohya_name.startswith("lora_te2_text_model_encoder_layers_31_")


def test_a_model_without_target_modules_is_refused() -> None:
    with pytest.raises(ValueError, match="no module to adapt"):
        add_lora(torch.nn.Linear(2, 2), [])
