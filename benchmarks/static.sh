#!/usr/bin/env bash
# Issue-4 results (docs/benchmarks.md, "Static compression"): TinyBERT MPNet-12 -> MiniLM-L6,
# structured pruning 50/50 + recovery (with latency), greedy layer pruning 6 -> 4 against dropping
# the top 2 layers, the COST-EFF accuracy-vs-FLOPs curve.
# Usage: bash benchmarks/static.sh [tinybert|tinybert_mpnet6|prune|layers|costeff|latency|table] ...  (default: all but tinybert_mpnet6)
# All but `tinybert` start from the fine-tuned MiniLM-L6 of `bash benchmarks/hadskip.sh teacher`.
set -euo pipefail
cd "$(dirname "$0")/.."
finetuned=runs/minilm-l6-2ep/stages/00-finetuned/model
recipes=benchmarks/recipes/static

tinybert() {  # the student's fine-tuned-without-teacher counterpart is $finetuned
  compresskit apply "$recipes/tinybert.yaml" -o runs/static-tinybert
}
tinybert_mpnet6() {  # a student of the teacher's own layers (every other one), from the teacher above,
  # then the same student trained on the labels alone (the "without distillation" counterpart)
  compresskit apply "$recipes/tinybert_mpnet6.yaml" -o runs/static-tinybert-mpnet6-3ep \
    --set model=runs/static-tinybert/stages/00-teacher/model
  compresskit apply "$recipes/tinybert_mpnet6.yaml" -o runs/static-tinybert-mpnet6-3ep-labels \
    --set model=runs/static-tinybert/stages/00-teacher/model --set stages.student.hard_label_weight=1.0
  compresskit benchmark runs/static-tinybert/stages/00-teacher/model \
    runs/static-tinybert-mpnet6-3ep/stages/00-student/model --threads 1 --examples 128 --repeats 2 \
    --output runs/static-mpnet6-latency.json
}
prune() {
  compresskit apply "$recipes/structured_prune.yaml" -o runs/static-prune --set "model=$finetuned"
}
layers() {
  compresskit apply "$recipes/layer_prune.yaml" -o runs/static-layers-greedy --set "model=$finetuned"
  compresskit apply "$recipes/layer_prune.yaml" -o runs/static-layers-top --set "model=$finetuned" \
    --set stages.prune.method=top
}
costeff() {
  compresskit apply "$recipes/cost_eff.yaml" -o runs/static-cost-eff --set "model=$finetuned"
}
latency() {  # batch 32 and 1, ratios against the unpruned model measured in the same run
  compresskit benchmark "$finetuned" runs/static-prune/stages/01-recovered/model \
    runs/static-layers-greedy/stages/01-recover/model --batch-sizes 1,32 --output runs/static-latency.json
}
table() {
  python benchmarks/summarize_static.py runs
}
for step in "${@:-tinybert prune layers costeff latency table}"; do
  for s in $step; do "$s"; done
done
