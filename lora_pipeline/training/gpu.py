"""GPU discipline before training: ask ComfyUI to give its VRAM back.

ComfyUI keeps its last checkpoint on the GPU. `POST /free {"unload_models": true,
"free_memory": true}` makes it unload (the models go when its worker is next idle); with no
body it answers 500, so the body is not optional.
"""

from __future__ import annotations

import httpx

FREE_TIMEOUT_S = 10.0


def free_comfyui_vram(base_url: str, timeout: float = FREE_TIMEOUT_S) -> str:
    """Ask the ComfyUI at `base_url` to unload its models; a sentence saying what happened.

    An unreachable or failing ComfyUI is reported, not raised: a ComfyUI that is down holds no
    VRAM, and training must not wait on it.
    """
    url = base_url.rstrip("/") + "/free"
    try:
        response = httpx.post(
            url, json={"unload_models": True, "free_memory": True}, timeout=timeout
        )
    except httpx.HTTPError as error:
        return f"could not ask ComfyUI to free its VRAM ({url}: {error}); training anyway"
    if response.status_code != 200:
        return (
            f"ComfyUI answered {response.status_code} to POST {url}: its models may still hold "
            "VRAM; training anyway"
        )
    return f"asked ComfyUI at {base_url} to unload its models and free its VRAM"
