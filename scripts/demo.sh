#!/usr/bin/env bash
# Set up a virtual environment and run the main job on the embedded default (a local Ray, the
# bundled data, no downloads):
#   1. fine-tune the encoder that ships with the project (albert_ray/model/bundled_encoder/) for
#      NER on the bundled demo data (data/demo_ner.*.jsonl) with Ray Train: its report,
#      report.html, and three sentences labeled;
#   2. label the bundled corpus (data/demo_corpus: plain text and JSONL, two bad rows among them)
#      with Ray Data into Parquet: labeled rows, quarantined rows with their reasons, a summary page;
#   3. read a few labeled rows back from the Parquet folder.
# Extra arguments go to the training job, e.g. `bash scripts/demo.sh train.epochs=3`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh ""
OUT=${ALBERT_RAY_DEMO_OUTPUT:-runs}
.venv/bin/albert-ray train --config jobs/configs/demo_ner.yaml "output_dir=$OUT" "$@" --predict \
  "张伟昨天在北京会见了新华社代表团。" \
  "据人民日报社报道，王芳已经抵达上海。" \
  "来自 Shanghai 的李明加入了清华大学 🎓。"
.venv/bin/albert-ray label --model "$OUT/demo_ner/model" --input data/demo_corpus \
  --output "$OUT/demo_labels" --id-field id --include-text
.venv/bin/python - "$OUT" <<'PY'
import json
import os
import sys
from collections import Counter

import pandas as pd

out = sys.argv[1]
metrics = json.load(open(f"{out}/demo_ner/model/metrics.json"))
manifest = json.load(open(f"{out}/demo_labels/_manifest.json"))
rows = pd.read_parquet(f"{out}/demo_labels")
bad = pd.read_parquet(f"{out}/demo_labels/_quarantine")
found = Counter((e["text"], e["label"]) for entities in rows["entities"] for e in entities)
f1 = metrics["metrics"]["micro avg"]["f1-score"]
print("\ndemo summary")
print(f"  model        {out}/demo_ner/model: test entity micro-F1 {f1:.3f} ({metrics['eval_examples']} sentences)")
print(f"  labels       {manifest['rows_out']} rows labeled into {out}/demo_labels (Parquet), "
      f"{manifest['rows_quarantined']} quarantined, {manifest['rows_per_second']} rows/s")
for r in bad.sort_values("line").itertuples():  # label rows name their source absolute: shown from here
    print(f"  quarantined  {os.path.relpath(r.source)} line {r.line}: {r.reason}")
print("  most found   " + ", ".join(f"{text}/{label} {n}" for (text, label), n in found.most_common(8)))
print(f"  pages        {out}/demo_ner/model/report.html, {out}/demo_labels/_summary.html")
print(f"  read them    .venv/bin/python -c \"import pandas as pd; print(pd.read_parquet('{out}/demo_labels').head())\"")
PY
