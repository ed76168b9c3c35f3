"""Rebuild the toy world's shipped models (lora_pipeline/toy_world/models/): about 20 minutes on
2 CPU cores. `python scripts/train_toy_world.py [OUT] [--unet-steps N]`."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from lora_pipeline.toy_world.models import SHIPPED_MODELS
from lora_pipeline.toy_world.train import TrainSteps, train_toy_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", type=Path, default=SHIPPED_MODELS)
    defaults = TrainSteps()
    parser.add_argument("--vae-steps", type=int, default=defaults.vae)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet)
    parser.add_argument("--identity-steps", type=int, default=defaults.identity)
    args = parser.parse_args()
    steps = replace(
        defaults, vae=args.vae_steps, unet=args.unet_steps, identity=args.identity_steps
    )
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"{time.monotonic() - started:7.0f} s {message}", flush=True)

    train_toy_world(args.out, steps, log=log)
    print(f"saved {args.out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
