"""Eval grids: the same prompts and seeds rendered without the LoRA and at rising strengths.

A row is one (prompt, seed) pair and a column one LoRA strength, strength 0 being the base model
alone. Because a seed fixes the starting noise, the columns of a row differ only by the LoRA, so a
reviewer sees at a glance what the LoRA does, and `lora_effect` puts a number on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lora_pipeline.errors import PipelineError
from lora_pipeline.generation.local import GenerationRequest, Loras, LoraSpec

BACKGROUND = "white"
TEXT_COLOUR = "black"
ELLIPSIS = "..."


class EvalGridError(PipelineError, ValueError):
    """A grid that cannot be drawn or scored from what it was given."""


@dataclass(frozen=True)
class EvalGridSpec:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    strengths: tuple[float, ...] = (0.0, 0.6, 0.8, 1.0)


@dataclass
class EvalCell:
    prompt: str
    seed: int
    strength: float
    image: Image.Image


@dataclass
class EvalGridResult:
    grid: Image.Image
    cells: list[EvalCell]
    row_labels: list[str]
    col_labels: list[str]


@dataclass(frozen=True)
class GridGeometry:
    """Where things go in a grid of square cells: a label column on the left, a header on top."""

    cell_size: int
    label_width: int
    header_height: int
    font_size: int
    padding: int


def grid_geometry(cell_size: int) -> GridGeometry:
    """The layout for cells of `cell_size` pixels; text scales with the cells."""
    font_size = max(10, round(cell_size / 24))
    padding = max(4, font_size // 2)
    return GridGeometry(
        cell_size=cell_size,
        label_width=max(120, (3 * cell_size) // 4),
        # room for two lines of column label
        header_height=2 * round(font_size * 1.25) + 2 * padding,
        font_size=font_size,
        padding=padding,
    )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's built-in font: scalable when Pillow has FreeType, a fixed bitmap otherwise.
    return ImageFont.load_default(size=size)


def _split_to_width(word: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    pieces, current = [], ""
    for char in word:
        if current and draw.textlength(current + char, font=font) > width:
            pieces.append(current)
            current = ""
        current += char
    return pieces + [current] if current else pieces


def wrap_label(text: str, draw: ImageDraw.ImageDraw, font, width: int, max_lines: int) -> list[str]:
    """Lines of at most `width` pixels; past `max_lines` the last line ends with '...'."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.extend(_split_to_width(word, draw, font, width))
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and draw.textlength(last + ELLIPSIS, font=font) > width:
        last = last[:-1]
    kept[-1] = last.rstrip() + ELLIPSIS
    return kept


def _draw_label(
    draw: ImageDraw.ImageDraw, text: str, box: tuple[int, int, int, int], geometry: GridGeometry
) -> None:
    left, top, right, bottom = box
    font = _font(geometry.font_size)
    line_height = round(geometry.font_size * 1.25)
    width = right - left - 2 * geometry.padding
    max_lines = max(1, (bottom - top - 2 * geometry.padding) // line_height)
    for index, line in enumerate(wrap_label(text, draw, font, width, max_lines)):
        y = top + geometry.padding + index * line_height
        draw.text((left + geometry.padding, y), line, fill=TEXT_COLOUR, font=font)


def compose_labelled_grid(
    rows: list[list[Image.Image]],
    row_labels: list[str],
    col_labels: list[str],
    cell_size: int | None = None,
) -> Image.Image:
    """Paste images into a grid with a header row of column labels and a column of row labels.

    The result is (label_width + columns × cell, header_height + rows × cell) pixels, with the
    sizes from `grid_geometry(cell)`; `cell_size` defaults to the first image's larger side.
    """
    if not rows or not rows[0]:
        raise EvalGridError("an eval grid needs at least one row and one column of images")
    n_cols = len(rows[0])
    if any(len(row) != n_cols for row in rows):
        raise EvalGridError("every row of an eval grid must have the same number of images")
    if len(row_labels) != len(rows) or len(col_labels) != n_cols:
        raise EvalGridError(
            f"{len(rows)}×{n_cols} images need as many labels, "
            f"got {len(row_labels)} row and {len(col_labels)} column labels"
        )
    geometry = grid_geometry(cell_size or max(rows[0][0].size))
    cell = geometry.cell_size
    grid = Image.new(
        "RGB",
        (geometry.label_width + n_cols * cell, geometry.header_height + len(rows) * cell),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(grid)
    for col, label in enumerate(col_labels):
        left = geometry.label_width + col * cell
        _draw_label(draw, label, (left, 0, left + cell, geometry.header_height), geometry)
    for row_index, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = geometry.header_height + row_index * cell
        _draw_label(draw, label, (0, top, geometry.label_width, top + cell), geometry)
        for col, image in enumerate(row):
            # Non-square images keep their aspect ratio, padded with the background.
            fitted = ImageOps.pad(image.convert("RGB"), (cell, cell), color=BACKGROUND)
            grid.paste(fitted, (geometry.label_width + col * cell, top))
    return grid


def strength_label(strength: float) -> str:
    return "no LoRA" if strength == 0 else f"LoRA {strength:g}"


class Renderer(Protocol):
    def generate(self, request: GenerationRequest, lora: Loras = None) -> Image.Image: ...


def render_eval_grid(
    generator: Renderer,
    base: GenerationRequest,
    lora_path: Path,
    spec: EvalGridSpec,
    below: Sequence[LoraSpec] = (),
) -> EvalGridResult:
    """Render every (prompt, seed) × strength cell with `base`'s settings and compose the grid.

    `below` are the LoRAs production puts under this one (the checkpoint's active baseline):
    every column has them, so the LoRA is judged as it will be used."""
    if not spec.prompts or not spec.seeds or not spec.strengths:
        raise EvalGridError("an eval grid needs at least one prompt, one seed and one strength")
    cells: list[EvalCell] = []
    rows: list[list[Image.Image]] = []
    row_labels: list[str] = []
    for prompt in spec.prompts:
        for seed in spec.seeds:
            request = replace(base, prompt=prompt, seed=seed)
            row = []
            for strength in spec.strengths:
                stack = [*below, LoraSpec(Path(lora_path), strength)]
                image = generator.generate(request, stack)
                cells.append(EvalCell(prompt=prompt, seed=seed, strength=strength, image=image))
                row.append(image)
            rows.append(row)
            row_labels.append(f"seed {seed}: {prompt}")
    col_labels = [strength_label(s) for s in spec.strengths]
    grid = compose_labelled_grid(rows, row_labels, col_labels)
    return EvalGridResult(grid=grid, cells=cells, row_labels=row_labels, col_labels=col_labels)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def lora_effect(result: EvalGridResult) -> float:
    """Mean absolute pixel difference (0–1) between no LoRA and the strongest LoRA, all rows."""
    strengths = sorted({cell.strength for cell in result.cells})
    if 0 not in strengths:
        raise EvalGridError("lora_effect needs a strength-0 (no LoRA) column to compare with")
    strongest = strengths[-1]
    if strongest <= 0:
        raise EvalGridError("lora_effect needs a column with a positive LoRA strength")
    by_key = {(c.prompt, c.seed, c.strength): c.image for c in result.cells}
    differences = [
        float(np.abs(_pixels(by_key[(p, s, 0)]) - _pixels(by_key[(p, s, strongest)])).mean())
        for (p, s, strength) in by_key
        if strength == strongest and (p, s, 0) in by_key
    ]
    return float(np.mean(differences))
