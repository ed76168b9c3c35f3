"""Images in Dagster metadata: there is no image type, but markdown with a data URI renders."""

from __future__ import annotations

import base64
import io

from dagster import MetadataValue
from PIL import Image


def image_markdown(image: Image.Image, title: str = "image", max_side: int = 768) -> MetadataValue:
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return MetadataValue.md(f"![{title}](data:image/png;base64,{data})")
