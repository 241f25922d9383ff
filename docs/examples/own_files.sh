#!/usr/bin/env bash
# Your own files, end to end: pretrain on some markets' file, adapt to another market's file
# (a different layout: space-separated, other column names, dates), evaluate, compare.
# The data is the synthetic recipe exported to files, so this runs anywhere:
#   bash docs/examples/own_files.sh [WORK_DIR]
# SCALE (data size, default 0.3) and EPOCHS (default 10) make it smaller or larger; extra
# `regiontune` options for every training command can be given in REGIONTUNE_OPTS.
set -euo pipefail
WORK=${1:-runs/own-files}
SCALE=${SCALE:-0.3}
EPOCHS=${EPOCHS:-10}
OPTS=(${REGIONTUNE_OPTS:-})
mkdir -p "$WORK"

# 1. export: the big markets in one CSV with a region column (epoch seconds), the small market
#    "harbor" in its own space-separated file with its own column names and ISO dates
python - "$WORK" "$SCALE" <<'PY'
import sys
import pandas as pd
from regiontune.data.recipes import synthetic_frame

work, scale = sys.argv[1], float(sys.argv[2])
frame = synthetic_frame(0, scale)
frame[frame.region.isin(["north", "south", "east", "west"])].to_csv(
    f"{work}/sources.csv", index=False)
harbor = frame[frame.region == "island"].rename(columns={"user": "userId", "item": "itemId"})
harbor["date"] = pd.to_datetime(harbor.timestamp, unit="s").dt.strftime("%Y-%m-%d")
harbor[["userId", "itemId", "date"]].to_csv(f"{work}/harbor.txt", sep=" ", index=False)
PY

HARBOR=(--file "harbor=$WORK/harbor.txt" --columns user=userId --columns item=itemId
        --columns timestamp=date)

# 2. pretrain on the sources' file (delimiter sniffed, region column read)
regiontune pretrain --file "$WORK/sources.csv" --out "$WORK/backbone" --epochs "$EPOCHS" "${OPTS[@]}"

# 3. adapt to harbor, a market the backbone never saw; and the from-scratch model to beat
regiontune adapt --backbone "$WORK/backbone" --region harbor --out "$WORK/harbor-lora" \
    "${HARBOR[@]}" --epochs "$EPOCHS" "${OPTS[@]}"
regiontune adapt --backbone "$WORK/backbone" --region harbor --method scratch \
    --out "$WORK/harbor-scratch" "${HARBOR[@]}" --epochs "$EPOCHS" "${OPTS[@]}"

# 4. evaluate the adapter on harbor's file, then everything side by side
regiontune evaluate --model "$WORK/backbone" --adapter "$WORK/harbor-lora" "${HARBOR[@]}"
regiontune compare --backbone "$WORK/backbone" --adapter "$WORK/harbor-lora" \
    --model "$WORK/harbor-scratch" --region harbor "${HARBOR[@]}" --json "$WORK/compare.json"
