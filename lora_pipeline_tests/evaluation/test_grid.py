from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lora_pipeline.evaluation.grid import (
    EvalGridError,
    EvalGridSpec,
    compose_labelled_grid,
    grid_geometry,
    lora_effect,
    render_eval_grid,
    wrap_label,
)
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest

BASE = GenerationRequest(prompt="", steps=2, cfg=4.0, width=32, height=32)


def solid(colour: str, size: tuple[int, int] = (40, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def has_ink(image: Image.Image) -> bool:
    """Whether a region holds anything other than the white background (i.e. text)."""
    return bool((np.asarray(image.convert("L")) < 128).any())


def test_grid_layout_cells_and_labels() -> None:
    rows = [
        [solid("red"), solid("green"), solid("blue")],
        [solid("black"), solid("gray"), solid("yellow")],
    ]
    grid = compose_labelled_grid(rows, ["row one", "row two"], ["a", "b", "c"], cell_size=40)
    g = grid_geometry(40)
    assert grid.size == (g.label_width + 3 * 40, g.header_height + 2 * 40)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            left, top = g.label_width + c * 40, g.header_height + r * 40
            cell = grid.crop((left, top, left + 40, top + 40))
            assert np.array_equal(np.asarray(cell), np.asarray(image)), (r, c)
        label = grid.crop(
            (0, g.header_height + r * 40, g.label_width, g.header_height + (r + 1) * 40)
        )
        assert has_ink(label), f"row label {r} not drawn"
    for c in range(3):
        left = g.label_width + c * 40
        assert has_ink(grid.crop((left, 0, left + 40, g.header_height))), f"column label {c}"
    assert not has_ink(grid.crop((0, 0, g.label_width, g.header_height))), "corner stays empty"


def test_cell_size_defaults_to_the_images_and_non_square_images_are_padded() -> None:
    rows = [[solid("red", (64, 32)), solid("blue", (64, 32))]]
    grid = compose_labelled_grid(rows, ["r"], ["a", "b"])
    g = grid_geometry(64)
    assert grid.size == (g.label_width + 2 * 64, g.header_height + 64)
    cell = np.asarray(
        grid.crop((g.label_width, g.header_height, g.label_width + 64, g.header_height + 64))
    )
    assert (cell[0, 0] == 255).all() and (cell[32, 32] == [255, 0, 0]).all()


def test_long_labels_are_wrapped_and_truncated() -> None:
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    from lora_pipeline.evaluation.grid import _font

    font = _font(10)
    text = "a very long prompt about a character " * 10 + "supercalifragilisticexpialidocious" * 3
    lines = wrap_label(text, draw, font, width=100, max_lines=3)
    assert len(lines) == 3
    assert lines[-1].endswith("...")
    assert all(draw.textlength(line, font=font) <= 100 for line in lines)
    long_word = wrap_label("x" * 200, draw, font, width=100, max_lines=50)
    assert len(long_word) > 1 and "".join(long_word) == "x" * 200
    # a long label still fits its cell in the grid
    grid = compose_labelled_grid([[solid("red")]], [text], [text], cell_size=40)
    assert grid.size == (grid_geometry(40).label_width + 40, grid_geometry(40).header_height + 40)


def test_mismatched_labels_are_refused() -> None:
    with pytest.raises(EvalGridError, match="labels"):
        compose_labelled_grid([[solid("red")]], ["a", "b"], ["c"])
    with pytest.raises(EvalGridError, match="same number"):
        compose_labelled_grid([[solid("red")], []], ["a", "b"], ["c"])
    with pytest.raises(EvalGridError, match="at least one row"):
        compose_labelled_grid([], [], [])


def test_render_eval_grid_rows_are_prompt_seed_pairs_columns_strengths(
    generator: DiffusersGenerator, loras: dict[str, Path]
) -> None:
    spec = EvalGridSpec(
        prompts=("zkchar, portrait", "zkchar, full body"), seeds=(1, 2), strengths=(0.0, 0.5, 1.0)
    )
    result = render_eval_grid(generator, BASE, loras["random"], spec)
    assert len(result.cells) == 2 * 2 * 3
    assert result.row_labels == [
        "seed 1: zkchar, portrait",
        "seed 2: zkchar, portrait",
        "seed 1: zkchar, full body",
        "seed 2: zkchar, full body",
    ]
    assert result.col_labels == ["no LoRA", "LoRA 0.5", "LoRA 1"]
    g = grid_geometry(32)
    assert result.grid.size == (g.label_width + 3 * 32, g.header_height + 4 * 32)
    first = result.cells[0]
    assert (first.prompt, first.seed, first.strength) == ("zkchar, portrait", 1, 0.0)
    plain = generator.generate(
        GenerationRequest(**{**BASE.__dict__, "prompt": "zkchar, portrait", "seed": 1})
    )
    assert np.array_equal(np.asarray(first.image), np.asarray(plain))
    assert lora_effect(result) > 0.01


def test_lora_effect_is_zero_for_a_lora_that_changes_nothing(
    generator: DiffusersGenerator, loras: dict[str, Path]
) -> None:
    spec = EvalGridSpec(prompts=("zkchar",), seeds=(3,), strengths=(0.0, 1.0))
    assert lora_effect(render_eval_grid(generator, BASE, loras["zero"], spec)) == 0.0
    assert lora_effect(render_eval_grid(generator, BASE, loras["random"], spec)) > 0.01


def test_lora_effect_needs_both_columns(
    generator: DiffusersGenerator, loras: dict[str, Path]
) -> None:
    only_lora = render_eval_grid(
        generator, BASE, loras["random"], EvalGridSpec(("x",), (1,), (1.0,))
    )
    with pytest.raises(EvalGridError, match="strength-0"):
        lora_effect(only_lora)
    with pytest.raises(EvalGridError, match="at least one prompt"):
        render_eval_grid(generator, BASE, loras["random"], EvalGridSpec((), (1,)))
