"""Resumable states: written atomically, pruned to the last K, matched by fingerprint."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_pipeline.training.checkpoint import (
    TrainingState,
    clear_states,
    fingerprint,
    load_latest_state,
    save_state,
)


def _state(step: int, run: str = "run-a") -> TrainingState:
    parameter = torch.nn.Parameter(torch.full((2, 3), float(step)))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    generator = torch.Generator().manual_seed(step)
    return TrainingState(
        fingerprint=run,
        global_step=step,
        epoch=step // 2 + 1,
        losses=[0.5] * step,
        history=list(range(1, step + 1)),
        started_at=123.0,
        weights={"unet.layer.lora_A.default.weight": parameter.detach()},
        optimizer=optimizer.state_dict(),
        lr_scheduler={"last_epoch": step, "base_lrs": [1e-3]},
        scaler={},
        rng=generator.get_state(),
    )


def test_the_newest_state_comes_back_whole(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        save_state(tmp_path, _state(step), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000006"]
    state = load_latest_state(tmp_path, "run-a")
    assert state is not None
    assert (state.global_step, state.epoch, state.history) == (6, 4, [1, 2, 3, 4, 5, 6])
    assert torch.equal(
        state.weights["unet.layer.lora_A.default.weight"],
        _state(6).weights["unet.layer.lora_A.default.weight"],
    )
    assert state.optimizer["state"][0]["step"] == 1
    assert torch.equal(state.rng, torch.Generator().manual_seed(6).get_state())
    assert state.lr_scheduler["last_epoch"] == 6


def test_states_of_another_run_or_half_written_are_ignored(tmp_path: Path) -> None:
    save_state(tmp_path, _state(2), keep_last=3)
    save_state(tmp_path, _state(4, run="run-b"), keep_last=3)
    (tmp_path / "step-00000009").mkdir()  # a crash before progress.json was written
    assert load_latest_state(tmp_path, "run-a").global_step == 2
    assert load_latest_state(tmp_path, "run-c") is None
    assert load_latest_state(tmp_path / "missing", "run-a") is None


def test_a_finished_run_clears_its_states(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    save_state(folder, _state(2), keep_last=2)
    clear_states(folder)
    assert not folder.exists()


def test_fingerprints_are_stable_and_order_free() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
