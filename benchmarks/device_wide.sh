#!/bin/bash
# Issue 13 on a lent GPU (the `device` tool): wider all-regions backbones, chosen on the
# training hold-out, and the suite's all-regions cells for the chosen one (see
# benchmarks/device_wide.py). The data travels as a copy (.gpu/data/), the newer
# transformers/peft/datasets as wheels (.whl/). Results land in $OUT.
# Usage: bash benchmarks/device_wide.sh [DEADLINE_SECONDS] [HARD_STOP_SECONDS]
set -u
source benchmarks/device_env.sh
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate, datasets; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, datasets.__version__, torch.cuda.is_available())"
python3 benchmarks/device_wide.py --out "$OUT" --deadline-seconds "${1:-420}" \
    --hard-stop-seconds "${2:-500}" 2>&1 | grep -v -i warn | tee "$OUT/device_wide_log.txt"
ls -la "$OUT"
