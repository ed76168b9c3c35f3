"""Evaluate a release: pick its best saved epoch, render the eval grid, score it, gate it, and
write its model card.

The steps, top to bottom:
1. the grid spec and gate thresholds come from the project's settings (defaults otherwise);
2. when training saved several epochs, each is rendered at full strength on the grid's prompts
   and seeds and scored; `choose_best_epoch` picks the one to release, and a candidate release
   is pointed at that file;
3. the full grid (no LoRA, then rising strengths) is rendered for that file, reusing every
   image already rendered in step 2;
4. the scores (LoRA effect, identity similarity to the approved images, CLIP score, a quality
   heuristic) decide the gate verdict; the eval is recorded with its settings, images and
   scores, in the registry and as JSON beside the grid;
5. the model card is written beside the LoRA.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import func, select

from lora_pipeline.errors import PipelineError
from lora_pipeline.evaluation.grid import (
    EvalGridResult,
    EvalGridSpec,
    Renderer,
    lora_effect,
    render_eval_grid,
    strength_label,
)
from lora_pipeline.evaluation.model_card import ModelCard, gate_override_line, render_model_card
from lora_pipeline.evaluation.scores import (
    GATED_SCORES,
    Embedder,
    GateThresholds,
    choose_best_epoch,
    clip_score,
    gate_verdict,
    identity_similarity,
    quality_score,
)
from lora_pipeline.files import atomic_path
from lora_pipeline.generation.local import GenerationRequest, Loras, LoraSpec, lora_stack
from lora_pipeline.generation.service import baseline_lora, request_settings
from lora_pipeline.media.images import load_image
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Character, DatasetVersion, Eval, LoraRelease, Project

CANONICAL_PROMPTS = ("portrait, looking at viewer", "full body, standing", "upper body, smiling")
DEFAULT_SEEDS = (1, 2)
# Identity is measured against at most this many approved images (the newest are kept).
MAX_REFERENCES = 32
MODEL_CARD_SUFFIX = ".model-card.md"

Log = Callable[[str], None]


class EvaluationError(PipelineError, ValueError):
    """A release that cannot be evaluated as asked (one line for the user)."""


@dataclass(frozen=True)
class EvalScorers:
    """The optional models behind the scores: the reference-matching embedder (identity) and
    a CLIP model path or hub id (prompt adherence). Without them those scores are not
    measured, and gate only if the project sets their threshold."""

    embedder: Embedder | None = None
    clip_model: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class EvalRef:
    eval_id: int
    release_id: int
    grid_relpath: str
    verdict: str
    scores: dict[str, float | None]
    gate_reasons: list[str] = field(default_factory=list)
    best_epoch: int | None = None
    model_card_relpath: str = ""

    @property
    def lora_effect(self) -> float:
        return float(self.scores["lora_effect"] or 0.0)


def eval_spec_for(
    trigger_word: str,
    prompts: Sequence[str] = CANONICAL_PROMPTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> EvalGridSpec:
    return EvalGridSpec(prompts=tuple(f"{trigger_word}, {p}" for p in prompts), seeds=tuple(seeds))


def project_eval_spec(character: Character) -> EvalGridSpec:
    """The grid of a character: its project's eval prompts and seeds, else the defaults."""
    settings = character.project.settings or {}
    return eval_spec_for(
        character.trigger_word,
        settings.get("eval_prompts") or CANONICAL_PROMPTS,
        settings.get("eval_seeds") or DEFAULT_SEEDS,
    )


class _CachedRenderer:
    """Renders each (request, LoRA, strength) once: the epoch comparison and the final grid
    share their no-LoRA and full-strength images."""

    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer
        self._images: dict[tuple[GenerationRequest, str, float], Image.Image] = {}

    def generate(self, request: GenerationRequest, lora: Loras = None) -> Image.Image:
        stack = lora_stack(lora)
        key = (request, tuple((str(spec.path), spec.strength) for spec in stack))
        if key not in self._images:
            self._images[key] = self._renderer.generate(request, list(stack))
        return self._images[key]


@dataclass(frozen=True)
class _Candidate:
    epoch: int
    relpath: str


@dataclass
class _Context:
    release_id: int
    slug: str
    checkpoint: str
    base: GenerationRequest
    spec: EvalGridSpec
    thresholds: GateThresholds
    candidates: list[_Candidate]
    references: list[str]
    # The checkpoint's active baseline LoRA, under a project release as in production.
    below: list[LoraSpec] = field(default_factory=list)


def evaluate_release(
    registry: Registry,
    root: DataRoot,
    renderer: Renderer,
    release_id: int,
    scorers: EvalScorers = EvalScorers(),
    spec: EvalGridSpec | None = None,
    log: Log = lambda _: None,
    stage_lora: Callable[[Path], object] | None = None,
) -> tuple[EvalRef, EvalGridResult]:
    """Evaluate a release (see the module docstring). `stage_lora` is called with each LoRA
    file before it is rendered: ComfyUI renders only what its loras folder holds."""
    context = _load_context(registry, root, release_id, spec, renderer_checkpoint(renderer))
    cached = _CachedRenderer(renderer)
    # Read once: every epoch's identity score compares with the same approved images.
    references = [load_image(root.path(p)) for p in context.references] if scorers.embedder else []
    per_epoch: dict[int, dict[str, float | None]] = {}
    best = context.candidates[-1]
    if len(context.candidates) > 1:
        for candidate in context.candidates:
            _stage(root, candidate, stage_lora)
            result = _epoch_grid(root, cached, context, candidate)
            per_epoch[candidate.epoch] = _grid_scores(result, references, scorers)
            log(f"epoch {candidate.epoch}: {_describe(per_epoch[candidate.epoch])}")
        chosen = choose_best_epoch(per_epoch, context.thresholds)
        best = next(c for c in context.candidates if c.epoch == chosen)
        _select_file(registry, root, context, best)
    _stage(root, best, stage_lora)
    result = render_eval_grid(
        cached, context.base, root.path(best.relpath), context.spec, context.below
    )
    # The best epoch's scores came from the same full-strength images (cached renders).
    scores = per_epoch.get(best.epoch) or _grid_scores(result, references, scorers)
    verdict, reasons = gate_verdict(scores, context.thresholds)
    ref = _record(registry, root, context, result, scores, verdict, reasons, per_epoch, best)
    card = write_model_card(registry, root, release_id)
    log(f"eval {ref.eval_id}: {_describe(scores)} → {verdict} {'; '.join(reasons)}".rstrip())
    return replace(ref, model_card_relpath=root.relative(card)), result


def renderer_checkpoint(renderer: Renderer) -> str:
    """The checkpoint a renderer draws with (backends name it), by its key; "" when unknown."""
    return commands.checkpoint_key(getattr(renderer, "checkpoint", None))


def _load_context(
    registry: Registry,
    root: DataRoot,
    release_id: int,
    spec: EvalGridSpec | None,
    checkpoint: str,
) -> _Context:
    with registry.session() as session:
        release = session.get(LoraRelease, release_id)
        if release is None:
            raise EvaluationError(f"unknown LoRA release {release_id}")
        if checkpoint and release.base_checkpoint and checkpoint != release.base_checkpoint:
            # A LoRA judged on another checkpoint than it was trained on says nothing.
            raise EvaluationError(
                f"release {release.id} was trained on checkpoint {release.base_checkpoint!r} "
                f"but the eval would render with {checkpoint!r}: configure the same checkpoint "
                "(LORA_PIPELINE_BASE_MODEL, LORA_PIPELINE_COMFYUI_CHECKPOINT)"
            )
        character = session.get(Character, release.character_id)
        assert character is not None  # foreign key
        base = GenerationRequest(
            prompt="", negative_prompt=character.negative_prompt, **request_settings(character)
        )
        references = [i.path for i in queries.approved_images(session, character.id)]
        baseline = None
        if release.scope == "project":
            baseline = baseline_lora(session, root, character, release.base_checkpoint)
        return _Context(
            release_id=release.id,
            slug=character.slug,
            checkpoint=release.base_checkpoint,
            base=base,
            below=[baseline[1]] if baseline else [],
            spec=spec or project_eval_spec(character),
            thresholds=GateThresholds.from_settings(character.project.settings or {}),
            candidates=_candidates(root, release),
            references=references[-MAX_REFERENCES:],
        )


def _candidates(root: DataRoot, release: LoraRelease) -> list[_Candidate]:
    """A candidate's saved epochs, oldest first, then the trainer's final file (the last
    epoch); a release already approved or further keeps the file it has."""
    hyper = release.hyperparameters or {}
    final_epoch = int(hyper.get("epochs") or 0)
    if release.status != "candidate":
        return [_Candidate(int(hyper.get("selected_epoch") or final_epoch), release.path)]
    final_file = str(hyper.get("final_file") or release.path)
    saved: list[_Candidate] = []
    for number, path in _epoch_files(hyper.get("epoch_files") or []):
        relpath = root.relative(Path(path)) if Path(path).is_absolute() else path
        if number < final_epoch and root.path(relpath).is_file():
            saved.append(_Candidate(number, relpath))
    return [*saved, _Candidate(final_epoch, final_file)]


def _epoch_files(paths: Sequence[str]) -> list[tuple[int, str]]:
    # The trainer names them <stem>-<epoch:06d>.safetensors.
    numbered = []
    for path in paths:
        tail = Path(path).stem.rsplit("-", 1)[-1]
        if tail.isdigit():
            numbered.append((int(tail), path))
    return sorted(numbered)


def _stage(root: DataRoot, candidate: _Candidate, stage_lora: Callable[[Path], object] | None):
    if stage_lora is not None:
        stage_lora(root.path(candidate.relpath))


def _full_strength(spec: EvalGridSpec) -> float:
    return max(spec.strengths)


def _epoch_grid(
    root: DataRoot, renderer: _CachedRenderer, context: _Context, candidate: _Candidate
) -> EvalGridResult:
    """One epoch's file on the no-LoRA and full-strength columns only: what the scores need."""
    spec = replace(context.spec, strengths=(0.0, _full_strength(context.spec)))
    path = root.path(candidate.relpath)
    return render_eval_grid(renderer, context.base, path, spec, context.below)


def _grid_scores(
    result: EvalGridResult, references: list[Image.Image], scorers: EvalScorers
) -> dict[str, float | None]:
    strongest = max(cell.strength for cell in result.cells)
    with_lora = [c for c in result.cells if c.strength == strongest]
    images = [c.image for c in with_lora]
    scores: dict[str, float | None] = {
        "lora_effect": lora_effect(result),
        "quality": sum(quality_score(i).score for i in images) / len(images),
        "identity": None,
        "clip_score": None,
    }
    if scorers.embedder is not None and references:
        scores["identity"] = identity_similarity(scorers.embedder, images, references)
    if scorers.clip_model:
        prompts = [c.prompt for c in with_lora]
        scores["clip_score"] = clip_score(scorers.clip_model, images, prompts, scorers.device)
    return scores


def _describe(scores: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in scores.items())


def _select_file(registry: Registry, root: DataRoot, context: _Context, best: _Candidate) -> None:
    with registry.session() as session:
        release = session.get(LoraRelease, context.release_id)
        assert release is not None
        if release.path == best.relpath or release.status != "candidate":
            return
        digest = sha256_file(root.path(best.relpath))
        commands.select_release_file(session, release.id, best.relpath, digest, best.epoch)


def _record(
    registry: Registry,
    root: DataRoot,
    context: _Context,
    result: EvalGridResult,
    scores: dict[str, float | None],
    verdict: str,
    reasons: list[str],
    per_epoch: dict[int, dict[str, float | None]],
    best: _Candidate,
) -> EvalRef:
    out_dir = _new_eval_dir(registry, root, context)
    grid_path = _save_png(result.grid, out_dir / "grid.png")
    image_paths = []
    for index, cell in enumerate(result.cells):
        name = f"cell-{index:03d}-seed{cell.seed}-{strength_label(cell.strength)}.png"
        image_paths.append(root.relative(_save_png(cell.image, out_dir / name.replace(" ", "_"))))
    settings = {
        "spec": asdict(context.spec),
        "base_request": asdict(context.base),
        "lora_file": best.relpath,
        "thresholds": context.thresholds.as_dict(),
        "references": len(context.references),
    }
    recorded = scores | {
        "gate_reasons": reasons,
        "best_epoch": best.epoch if per_epoch else None,
        "per_epoch": {str(k): v for k, v in per_epoch.items()},
    }
    payload = {"settings": settings, "scores": recorded, "verdict": verdict, "images": image_paths}
    root.write_text_atomic(root.relative(out_dir / "eval.json"), json.dumps(payload, indent=2))
    with registry.session() as session:
        row = commands.record_eval(
            session,
            context.release_id,
            settings,
            root.relative(grid_path),
            image_paths,
            recorded,
            verdict,
        )
        eval_id = row.id
    return EvalRef(
        eval_id=eval_id,
        release_id=context.release_id,
        grid_relpath=root.relative(grid_path),
        verdict=verdict,
        scores=scores,
        gate_reasons=reasons,
        best_epoch=best.epoch if per_epoch else None,
    )


def _new_eval_dir(registry: Registry, root: DataRoot, context: _Context) -> Path:
    """`evals/<slug>/<release>/<n>/`, a folder per evaluation: a re-evaluation never
    overwrites the images an earlier eval record points at."""
    with registry.session() as session:
        done = session.scalar(
            select(func.count(Eval.id)).where(Eval.lora_release_id == context.release_id)
        )
    parent = root.dir("evals", context.slug, str(context.release_id))
    number = (done or 0) + 1
    while True:
        try:
            (parent / str(number)).mkdir()
            return parent / str(number)
        except FileExistsError:
            number += 1  # an evaluation running at the same time took it


def _save_png(image: Image.Image, path: Path) -> Path:
    # The temporary name ends in .tmp: PIL is told the format.
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


# --- the model card --------------------------------------------------------------------------


def model_card_path(root: DataRoot, lora_relpath: str) -> Path:
    """`<lora stem>.model-card.md` beside the LoRA file."""
    lora = root.path(lora_relpath)
    return lora.with_name(lora.stem + MODEL_CARD_SUFFIX)


def write_model_card(registry: Registry, root: DataRoot, release_id: int) -> Path:
    """Write (or rewrite, after a status change) the release's model card beside its LoRA."""
    with registry.session() as session:
        release = session.get(LoraRelease, release_id)
        if release is None:
            raise ValueError(f"unknown LoRA release {release_id}")
        character = session.get(Character, release.character_id)
        assert character is not None
        version = (
            session.get(DatasetVersion, release.dataset_version_id)
            if release.dataset_version_id
            else None
        )
        evaluation = queries.latest_eval(session, release.id)
        card_path = model_card_path(root, release.path)
        card = _model_card(root, release, character, character.project, version, evaluation)
        card = replace(card, grid_path=_relative_to(card.grid_path, card_path.parent, root))
    root.write_text_atomic(root.relative(card_path), render_model_card(card))
    return card_path


def _relative_to(relpath: str, folder: Path, root: DataRoot) -> str:
    if not relpath:
        return ""
    return Path(os.path.relpath(root.path(relpath), folder)).as_posix()


def _model_card(
    root: DataRoot,
    release: LoraRelease,
    character: Character,
    project: Project,
    version: DatasetVersion | None,
    evaluation: Any,
) -> ModelCard:
    settings = project.settings or {}
    manifest = version.manifest if version else {}
    dataset_provenance = manifest.get("provenance") or {}
    eval_scores = dict(evaluation.scores) if evaluation else {}
    return ModelCard(
        character_name=character.name,
        character_slug=character.slug,
        trigger_word=character.trigger_word,
        base_checkpoint=str(release.hyperparameters.get("base_model") or release.base_checkpoint),
        release_id=release.id,
        release_status=release.status,
        lora_file=Path(release.path).name,
        lora_sha256=release.sha256,
        dataset_version=version.version_hash if version else "",
        image_count=version.image_count if version else 0,
        shot_distribution=_shot_distribution(root, character.slug, version),
        training_parameters=dict(release.hyperparameters or {}),
        grid_path=evaluation.grid_path if evaluation else "",
        scores={name: eval_scores.get(name) for name in GATED_SCORES},
        verdict=evaluation.verdict if evaluation else "pending",
        thresholds=GateThresholds.from_settings(settings),
        created=release.created_at,
        verdict_reasons=eval_scores.get("gate_reasons") or [],
        best_epoch=eval_scores.get("best_epoch"),
        parent_release_id=release.parent_release_id,
        provenance=_provenance(manifest),
        # The licence recorded at approval first: the project's may have changed since.
        licence=release.licence or settings.get("licence") or dataset_provenance.get("license", ""),
        author=settings.get("author") or dataset_provenance.get("author", ""),
        source_url=settings.get("source_url") or dataset_provenance.get("url", ""),
        notes=settings.get("notes") or dataset_provenance.get("notes", ""),
        gate_override=gate_override_line(release),
    )


def _shot_distribution(root: DataRoot, slug: str, version: DatasetVersion | None) -> dict[str, int]:
    if version is None:
        return {}
    metadata = root.path(f"kohya/{slug}/{version.version_hash}/metadata.json")
    try:
        distribution = json.loads(metadata.read_text()).get("shot_distribution") or {}
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in distribution.items() if isinstance(v, int)}


def _provenance(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Images per origin and source URL, from the dataset manifest."""
    counts: dict[tuple[str, str], int] = {}
    for entry in manifest.get("images") or []:
        provenance = entry.get("provenance") or {}
        key = (str(entry.get("origin", "")), str(provenance.get("url") or ""))
        counts[key] = counts.get(key, 0) + 1
    return [{"kind": k, "url": u, "count": n} for (k, u), n in sorted(counts.items())]
