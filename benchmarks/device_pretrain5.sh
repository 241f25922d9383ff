#!/bin/bash
# Issue-2 figure on a lent GPU: a backbone pretrained on all five WSDM markets, evaluated on
# t1's official 100 candidates (and every market's validation users). Results land in $OUT.
set -u
source benchmarks/device_env.sh
timeout ${1:-170} python3 - <<'PY' 2>&1 | grep -v -i warn | tail -20 | tee "$OUT/pretrain5.txt"
import json, os, logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
logging.getLogger("accelerate").setLevel(logging.WARNING)
from regiontune.config import DataConfig, ModelConfig, TrainConfig
from regiontune.training.pretrain import pretrain
meta = pretrain(DataConfig(recipe="wsdm22-xmrec", data_dir=".gpu/data/wsdm22-xmrec",
                           regions=["s1", "s2", "s3", "t1", "t2"]),
                ModelConfig(), TrainConfig(epochs=12, progress=False), "/tmp/bb5")
json.dump(meta, open(os.path.join(os.environ["OUT"], "backbone5_meta.json"), "w"), indent=1)
for region, m in sorted(meta["metrics"].items()):
    print(region, m["protocol"], "ndcg@10=%.4f hr@10=%.4f users=%d" % (m["ndcg@10"], m["hr@10"], m["users"]))
PY
