#!/bin/bash
# Runs the WSDM benchmarks on a lent GPU machine (the `device` tool); see device_env.sh. The
# data travels as a copy (.gpu/data/). Results land in $OUT.
# Usage: bash benchmarks/device_run.sh [MINUTES]. (The first run's `regiontune.cli.main
# pretrain` step failed there: typer needs pydantic, absent on that machine; the 5-market
# backbone was then trained with device_pretrain5.sh, which calls the Python API.)
set -u
BUDGET=${1:-6}
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers, peft, accelerate, datasets; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, datasets.__version__, torch.cuda.is_available())"
DATA=.gpu/data/wsdm22-xmrec
# Issue 2: a backbone pretrained on all five markets, evaluated on t1's official candidates.
timeout 120 python3 -m regiontune.cli.main pretrain --data wsdm22-xmrec --data-dir $DATA \
    --regions s1,s2,s3,t1,t2 --out /tmp/bb5 --epochs 15 --set train.progress=false \
    2>&1 | grep -v Warning | tail -12 | tee "$OUT/pretrain5.txt"
cp /tmp/bb5/regiontune.json "$OUT/backbone5_meta.json" 2>/dev/null
# Issue 3/4: the wsdm suite (backbone on s1-s3; adapters and baselines for t1, t2).
python3 -m benchmarks.run wsdm --data-dir $DATA --work-dir /tmp/bench --out "$OUT/wsdm.json" \
    --budget-minutes "$BUDGET" 2>&1 | grep -v -i warn | tail -100 > "$OUT/wsdm_log.txt"
cp /tmp/bench/wsdm/backbone/regiontune.json "$OUT/backbone_s123_meta.json" 2>/dev/null
cp /tmp/bench/wsdm/backbone/model.safetensors "$OUT/backbone_s123.safetensors" 2>/dev/null
tail -5 "$OUT/wsdm_log.txt"
