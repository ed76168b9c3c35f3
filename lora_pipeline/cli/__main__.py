"""`python -m lora_pipeline.cli` is `lora-pipeline`."""

import sys

from lora_pipeline.cli import main

sys.exit(main())
