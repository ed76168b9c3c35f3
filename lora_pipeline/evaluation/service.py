"""Render the eval grid of a release, store it beside the LoRA, and record the eval."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from lora_pipeline.evaluation.grid import (
    EvalGridResult,
    EvalGridSpec,
    lora_effect,
    render_eval_grid,
)
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Character, LoraRelease

CANONICAL_PROMPTS = ("portrait, looking at viewer", "full body, standing", "upper body, smiling")
DEFAULT_SEEDS = (1, 2)
# Below this mean pixel change between the no-LoRA and full-strength columns, the LoRA does
# nothing visible: the gate does not pass it.
MIN_LORA_EFFECT = 0.002


@dataclass(frozen=True)
class EvalRef:
    eval_id: int
    grid_relpath: str
    lora_effect: float
    verdict: str


def eval_spec_for(trigger_word: str, prompts: tuple[str, ...] = CANONICAL_PROMPTS) -> EvalGridSpec:
    return EvalGridSpec(prompts=tuple(f"{trigger_word}, {p}" for p in prompts), seeds=DEFAULT_SEEDS)


def evaluate_release(
    registry: Registry,
    root: DataRoot,
    generator: DiffusersGenerator,
    release_id: int,
    spec: EvalGridSpec | None = None,
) -> tuple[EvalRef, EvalGridResult]:
    with registry.session() as session:
        release = session.get(LoraRelease, release_id)
        if release is None:
            raise ValueError(f"unknown LoRA release {release_id}")
        character = session.get(Character, release.character_id)
        spec = spec or eval_spec_for(character.trigger_word)
        base = GenerationRequest(
            prompt="",
            negative_prompt=character.negative_prompt,
            steps=character.steps,
            cfg=character.cfg,
            sampler=character.sampler,
            scheduler=character.scheduler,
            width=character.width,
            height=character.height,
        )
        lora_path, slug = root.path(release.path), character.slug
    result = render_eval_grid(generator, base, lora_path, spec)
    out_dir = root.dir("evals", slug, str(release_id))
    grid_path = out_dir / "grid.png"
    tmp = grid_path.with_suffix(".tmp.png")
    result.grid.save(tmp)
    tmp.replace(grid_path)
    effect = lora_effect(result)
    verdict = "pass" if effect >= MIN_LORA_EFFECT else "fail"
    settings = {"spec": asdict(spec), "base_request": asdict(base)}
    scores = {"lora_effect": effect, "min_lora_effect": MIN_LORA_EFFECT}
    root.write_text_atomic(
        root.relative(out_dir / "eval.json"),
        json.dumps({"settings": settings, "scores": scores, "verdict": verdict}, indent=2),
    )
    with registry.session() as session:
        row = commands.record_eval(
            session, release_id, settings, root.relative(grid_path), [], scores, verdict
        )
        eval_id = row.id
    return EvalRef(eval_id, root.relative(grid_path), effect, verdict), result
