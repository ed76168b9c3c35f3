"""A contact sheet: a small grid of thumbnails that shows at a glance what a stage kept."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

BACKGROUND = (32, 32, 32)


def contact_sheet(
    images: Sequence[Image.Image], cell: int = 128, columns: int = 4, gap: int = 4
) -> Image.Image:
    """Thumbnails of the images (aspect kept, centred in square cells), row by row."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    if cell < 8 or columns < 1 or gap < 0:
        raise ValueError("cell must be at least 8 px, columns at least 1, gap not negative")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new(
        "RGB", (columns * cell + (columns + 1) * gap, rows * cell + (rows + 1) * gap), BACKGROUND
    )
    for position, image in enumerate(images):
        thumb = image.convert("RGB")
        thumb.thumbnail((cell, cell))
        row, column = divmod(position, columns)
        x = gap + column * (cell + gap) + (cell - thumb.width) // 2
        y = gap + row * (cell + gap) + (cell - thumb.height) // 2
        sheet.paste(thumb, (x, y))
    return sheet
