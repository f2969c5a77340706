#!/usr/bin/env bash
# Set up a virtual environment and run the main job on the embedded default: train a small NER
# model on the bundled sample with a local Ray, print its report, and label a few sentences.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh ""
exec .venv/bin/albert-ray train --config jobs/configs/sample_ner.yaml "$@" --predict \
  "张伟昨天在北京会见了新华社代表团。" \
  "据人民日报社报道，王芳已经抵达上海。" \
  "来自 Shanghai 的李明加入了清华大学 🎓。"
