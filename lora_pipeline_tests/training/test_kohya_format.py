from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from lora_pipeline.training.kohya_format import (
    UNET_TARGET_MODULES,
    LoraFormatError,
    kohya_metadata,
    peft_unet_to_kohya,
    read_kohya_lora,
    save_kohya_lora,
)
from lora_pipeline_tests.generation.tiny_assets import DATA

METADATA_ARGS = dict(
    base_model_name="model.safetensors",
    rank=4,
    alpha=4.0,
    learning_rate=1e-4,
    steps=4,
    epochs=1,
    batch_size=1,
    resolution=512,
    num_images=4,
    seed=42,
    tag_frequency={"a red square on white": 1, "yellow stripes": 3},
    dataset_hash="d" * 64,
    base_model_hash="b" * 64,
    trigger_word="zkchar",
    title="zkchar_v1",
)
# Keys of the example that only exist once the file is written or the run has finished.
WRITTEN_LATER = {
    "sshs_model_hash",
    "sshs_legacy_hash",
    "ss_training_started_at",
    "ss_training_finished_at",
}


def reference_unet_modules() -> dict[str, tuple[list[int], list[int]]]:
    with open(DATA / "kohya_sd15_lora_r4_modules.tsv", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    return {
        row["module"]: (json.loads(row["lora_down_shape"]), json.loads(row["lora_up_shape"]))
        for row in rows
        if row["module"].startswith("lora_unet_")
    }


def example_metadata() -> dict[str, str]:
    return json.loads((DATA / "kohya_sd15_lora_metadata_example.json").read_text("utf-8"))


def test_full_sd15_unet_gives_kohyas_192_modules_with_their_shapes() -> None:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        unet.add_adapter(
            LoraConfig(
                r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=UNET_TARGET_MODULES
            )
        )
    tensors = peft_unet_to_kohya(get_peft_model_state_dict(unet), alpha=4.0)
    expected = reference_unet_modules()
    assert len(expected) == 192
    assert {key.split(".", 1)[0] for key in tensors} == set(expected)
    for module, (down_shape, up_shape) in expected.items():
        assert list(tensors[f"{module}.lora_down.weight"].shape) == down_shape, module
        assert list(tensors[f"{module}.lora_up.weight"].shape) == up_shape, module
        alpha = tensors[f"{module}.alpha"]
        assert alpha.shape == () and alpha.dtype == torch.float16 and float(alpha) == 4.0
    assert len(tensors) == 3 * 192


def test_peft_keys_are_renamed_and_cast() -> None:
    state = {
        "down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(4, 32),
        "down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 4),
    }
    tensors = peft_unet_to_kohya(state, alpha=2.0, dtype=torch.float32)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert set(tensors) == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert tensors[f"{name}.lora_down.weight"].dtype == torch.float32
    assert float(tensors[f"{name}.alpha"]) == 2.0


def test_peft_dict_that_is_not_plain_lora_is_refused() -> None:
    with pytest.raises(LoraFormatError, match="lora_magnitude_vector"):
        peft_unet_to_kohya({"a.lora_magnitude_vector": torch.ones(1)}, alpha=1.0)
    with pytest.raises(LoraFormatError, match="without both"):
        peft_unet_to_kohya({"a.lora_A.weight": torch.ones(1, 1)}, alpha=1.0)


def test_metadata_speaks_kohyas_keys_with_string_values() -> None:
    metadata = kohya_metadata(**METADATA_ARGS)
    assert all(isinstance(value, str) for value in metadata.values())
    assert set(example_metadata()) - WRITTEN_LATER <= set(metadata)
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4"
    assert metadata["ss_network_alpha"] == "4.0"
    assert metadata["ss_v2"] == "False"
    assert metadata["ss_clip_skip"] == "None"
    assert metadata["ss_new_sd_model_hash"] == "b" * 64
    assert metadata["modelspec.resolution"] == "512x512"
    assert metadata["lora_pipeline.dataset_hash"] == "d" * 64
    assert metadata["lora_pipeline.base_model_hash"] == "b" * 64
    assert metadata["lora_pipeline.version"]
    frequency = json.loads(metadata["ss_tag_frequency"])
    assert frequency == {"1_zkchar": {"a red square on white": 1, "yellow stripes": 3}}
    datasets = json.loads(metadata["ss_datasets"])
    assert datasets[0]["tag_frequency"] == frequency
    assert datasets[0]["resolution"] == [512, 512]
    assert json.loads(metadata["ss_dataset_dirs"]) == {"1_zkchar": {"n_repeats": 1, "img_count": 4}}


def test_metadata_takes_kohyas_nested_tag_frequency_and_extra_keys() -> None:
    nested = {"10_img": {"a": 2}}
    metadata = kohya_metadata(
        **{**METADATA_ARGS, "tag_frequency": nested}, extra={"ss_seed": 1, "mine": None}
    )
    assert json.loads(metadata["ss_tag_frequency"]) == nested
    assert metadata["ss_seed"] == "1"
    assert metadata["mine"] == "None"


def _tensors(scale: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    name = "lora_unet_mid_block_attentions_0_proj_in"
    return {
        # big enough (> 1 MiB) that the legacy hash reads real bytes
        f"{name}.lora_down.weight": torch.randn(4, 80000, generator=generator).half() * scale,
        f"{name}.lora_up.weight": torch.randn(1280, 4, generator=generator).half(),
        f"{name}.alpha": torch.tensor(4.0, dtype=torch.float16),
    }


def test_save_and_read_round_trip_with_kohya_hashes(tmp_path: Path) -> None:
    tensors = _tensors()
    metadata = {**kohya_metadata(**METADATA_ARGS), "lora_pipeline.note": "not hashed"}
    path = tmp_path / "loras" / "char.safetensors"
    sha256 = save_kohya_lora(path, tensors, metadata)
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["char.safetensors"]

    read_tensors, read_metadata = read_kohya_lora(path)
    assert set(read_tensors) == set(tensors)
    assert all(torch.equal(read_tensors[k], tensors[k]) for k in tensors)
    assert {k: read_metadata[k] for k in metadata} == metadata

    # sshs_model_hash: sha256 of everything after the header of the written file
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    assert read_metadata["sshs_model_hash"] == hashlib.sha256(raw[8 + header_length :]).hexdigest()
    # sshs_legacy_hash: kohya's 64 KiB at 1 MiB of the file serialised with ss_* metadata only
    ss_only = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    legacy = hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    assert read_metadata["sshs_legacy_hash"] == legacy

    other = save_kohya_lora(tmp_path / "other.safetensors", _tensors(scale=2.0), metadata)
    assert other != sha256
    assert (
        read_kohya_lora(tmp_path / "other.safetensors")[1]["sshs_model_hash"]
        != (read_metadata["sshs_model_hash"])
    )


def test_bad_metadata_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "char.safetensors"
    with pytest.raises(LoraFormatError, match="must be strings.*ss_network_dim"):
        save_kohya_lora(path, _tensors(), {"ss_network_dim": 4})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LoraFormatError, match="not found"):
        read_kohya_lora(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(LoraFormatError, match="not a readable safetensors file"):
        read_kohya_lora(broken)


def test_the_session_id_is_random_per_run_as_kohya_draws_it() -> None:
    ids = {kohya_metadata(**METADATA_ARGS)["ss_session_id"] for _ in range(4)}
    assert len(ids) == 4 and all(0 <= int(i) <= 2**32 for i in ids)
    pinned = kohya_metadata(**METADATA_ARGS, extra={"ss_session_id": 7})
    assert pinned["ss_session_id"] == "7"
