#!/usr/bin/env bash
# Train the LoRA of Aiko (trigger word: aiko) on this dataset, version <version_hash>.
# Written by lora_pipeline from kohya_config.json; edit freely.
#
#   KOHYA_DIR=/path/to/sd-scripts ./train.sh        (BASE_MODEL, OUTPUT_DIR override)
#
# Smart defaults for 10 images: 20 epochs, batch 1, lr 0.0001, rank 32, alpha 16, 512 px; 200 steps.
set -euo pipefail

DATASET_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KOHYA_DIR="${KOHYA_DIR:?set KOHYA_DIR to a kohya sd-scripts checkout (git clone https://github.com/kohya-ss/sd-scripts)}"
BASE_MODEL_DEFAULT=/models/tiny-sd
BASE_MODEL="${BASE_MODEL:-$BASE_MODEL_DEFAULT}"
OUTPUT_DIR="${OUTPUT_DIR:-$DATASET_DIR/../<version_hash>-output}"
if [ -z "$BASE_MODEL" ]; then
  echo "set BASE_MODEL to the checkpoint to train on" >&2
  exit 1
fi
# kohya resolves the image folders of dataset.toml from the working directory.
cd "$DATASET_DIR"
mkdir -p "$OUTPUT_DIR"

# Method 1: kohya sd-scripts (recommended).
# Monitor it with: tensorboard --logdir "$OUTPUT_DIR/logs"
accelerate launch --num_cpu_threads_per_process 1 "$KOHYA_DIR/train_network.py" \
  --pretrained_model_name_or_path "$BASE_MODEL" \
  --dataset_config dataset.toml \
  --cache_latents \
  --output_dir "$OUTPUT_DIR" \
  --output_name aiko_<version_hash:12> \
  --save_model_as safetensors \
  --save_precision fp16 \
  --save_every_n_epochs 5 \
  --max_train_epochs 20 \
  --learning_rate 0.0001 \
  --unet_lr 0.0001 \
  --text_encoder_lr 5e-05 \
  --lr_scheduler cosine_with_restarts \
  --optimizer_type AdamW \
  --mixed_precision fp16 \
  --gradient_checkpointing \
  --sdpa \
  --seed 42 \
  --min_snr_gamma 5.0 \
  --max_data_loader_n_workers 2 \
  --persistent_data_loader_workers \
  --logging_dir "$OUTPUT_DIR/logs" \
  --log_with tensorboard \
  --log_prefix aiko \
  --clip_skip 2 \
  --network_module networks.lora \
  --network_dim 32 \
  --network_alpha 16

# Method 2: diffusers' examples/text_to_image/train_text_to_image_lora.py (uncomment).
# It reads the captions from metadata.jsonl; it has no num_repeats.
# accelerate launch train_text_to_image_lora.py \
#   --pretrained_model_name_or_path="$BASE_MODEL" \
#   --train_data_dir="$DATASET_DIR" \
#   --output_dir="$OUTPUT_DIR/diffusers" \
#   --resolution=512 \
#   --train_batch_size=1 \
#   --num_train_epochs=20 \
#   --learning_rate=0.0001 \
#   --rank=32
