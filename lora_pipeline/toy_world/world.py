"""Figures of the toy world and their prompts.

A figure is a head with hair of one colour, a body in an outfit of another, and one prop. The
prompt names exactly those three, so a model that follows the prompt draws the figure; the
drawing varies by seed (position, size, background) so a model must learn the figure, not one
picture of it.
"""

from __future__ import annotations

import itertools
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from lora_pipeline.files import atomic_path
from lora_pipeline.media.video import ffmpeg_exe

SIZE = 64

HAIR = {
    "teal": (0, 150, 150),
    "black": (25, 25, 30),
    "pink": (240, 110, 180),
    "orange": (245, 140, 20),
}
OUTFIT = {
    "yellow raincoat": (240, 210, 30),
    "green uniform": (40, 140, 60),
    "blue dress": (40, 70, 210),
    "purple jacket": (130, 50, 160),
}
PROPS = ("red boots", "white scarf", "brown backpack")
SKIN = (245, 205, 170)


@dataclass(frozen=True)
class Figure:
    hair: str
    outfit: str
    prop: str

    @property
    def prompt(self) -> str:
        return f"{self.hair} hair, {self.outfit}, {self.prop}"

    @property
    def index(self) -> int:
        """The figure's class number in `all_figures()` order (the identity model's label)."""
        return all_figures().index(self)


def all_figures() -> list[Figure]:
    return [Figure(*combo) for combo in itertools.product(HAIR, OUTFIT, PROPS)]


def parse_figure(prompt: str) -> Figure | None:
    """The figure a prompt names (its hair, outfit and prop, in any order), else None."""
    text = prompt.lower()
    hair = [h for h in HAIR if f"{h} hair" in text]
    outfit = [o for o in OUTFIT if o in text]
    prop = [p for p in PROPS if p in text]
    if len(hair) == len(outfit) == len(prop) == 1:
        return Figure(hair[0], outfit[0], prop[0])
    return None


def draw_figure(figure: Figure, seed: int, size: int = SIZE) -> Image.Image:
    """The figure at a seed-dependent place and size on a light background."""
    rng = random.Random(seed)
    shade = rng.randint(215, 250)
    image = Image.new("RGB", (SIZE, SIZE), (shade, shade, rng.randint(215, 250)))
    draw = ImageDraw.Draw(image)
    scale = rng.uniform(0.85, 1.1)
    cx = SIZE / 2 + rng.uniform(-6, 6)
    top = 6 + rng.uniform(-3, 3)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [cx + x0 * scale, top + y0 * scale, cx + x1 * scale, top + y1 * scale]

    outfit, hair = OUTFIT[figure.outfit], HAIR[figure.hair]
    if figure.prop == "brown backpack":  # behind the body
        draw.rectangle(box(-15, 20, 15, 38), fill=(120, 75, 35))
    draw.rectangle(box(-5, 40, -1, 52), fill=SKIN)  # legs
    draw.rectangle(box(1, 40, 5, 52), fill=SKIN)
    draw.polygon(
        [
            tuple(box(-8, 18, 0, 0)[:2]),
            tuple(box(8, 18, 0, 0)[:2]),
            tuple(box(12, 42, 0, 0)[:2]),
            tuple(box(-12, 42, 0, 0)[:2]),
        ],
        fill=outfit,
    )
    draw.ellipse(box(-8, 2, 8, 18), fill=SKIN)  # head
    draw.chord(box(-10, -1, 10, 17), 180, 360, fill=hair)  # hair on top of the head
    draw.rectangle(box(-10, 7, -7, 16), fill=hair)
    draw.rectangle(box(7, 7, 10, 16), fill=hair)
    if figure.prop == "red boots":
        draw.rectangle(box(-7, 49, -1, 55), fill=(210, 30, 30))
        draw.rectangle(box(1, 49, 7, 55), fill=(210, 30, 30))
    else:
        draw.rectangle(box(-5, 52, -1, 55), fill=(60, 40, 30))  # plain shoes
        draw.rectangle(box(1, 52, 5, 55), fill=(60, 40, 30))
    if figure.prop == "white scarf":
        draw.rectangle(box(-9, 17, 9, 22), fill=(255, 255, 255))
        draw.rectangle(box(4, 17, 9, 30), fill=(255, 255, 255))
    return image if size == SIZE else image.resize((size, size), Image.Resampling.BICUBIC)


def samples(figures: list[Figure], count: int, seed: int) -> Iterator[tuple[Figure, int]]:
    """`count` (figure, drawing seed) pairs cycling through `figures` in a seeded order."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.choice(figures), rng.randrange(1 << 30)


def write_figure_video(path: Path, figure: Figure, count: int, seed: int, side: int = 256) -> Path:
    """An mp4 of `count` drawings of `figure`, one per second, each `side` px (upscaled without
    smoothing): a "trailer" for the ingest stage, whose frames are the figure as drawn."""
    frames = [
        draw_figure(figure, s).resize((side, side), Image.Resampling.NEAREST)
        for _, s in samples([figure], count, seed)
    ]
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{side}x{side}", "-r", "1"]
    command += ["-i", "-", "-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"]
    with atomic_path(path) as temporary:
        # -f mp4: the temporary name does not end in .mp4.
        result = subprocess.run(
            [*command, "-f", "mp4", str(temporary)],
            input=b"".join(frame.tobytes() for frame in frames),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg could not write {path.name}: {result.stderr[-300:]!r}")
    return Path(path)
