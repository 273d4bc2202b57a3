#!/usr/bin/env bash
# Issue-5 results (docs/benchmarks.md, "Early exit"): DeeBERT, PABEE, BERxiT, PCEE-BERT and
# ConsistentEE on the fine-tuned MiniLM-L6, with the budgeted-exit baselines, on one plot.
# Usage: bash benchmarks/early_exit.sh [train|curves] ...   (default: both)
#   EE_METHODS="pabee consistentee" restricts `train` (consistentee-r0: ConsistentEE without its task
#   rounds, the ablation); the teacher and the budgeted-exit runs come from benchmarks/hadskip.sh
#   (steps `teacher` and `baselines`). EE_POOLING=mean trains and plots
#   exit heads that read the mean over real tokens (runs/ee-METHOD-mean, curves-mean.*).
set -euo pipefail
cd "$(dirname "$0")/.."
finetuned=runs/minilm-l6-2ep/stages/00-finetuned/model
methods=(${EE_METHODS:-deebert pabee berxit pcee consistentee})
pooling=${EE_POOLING:-cls}
suffix=$([ "$pooling" = cls ] || echo "-$pooling")

train() {
  [ -d "$finetuned" ] || bash benchmarks/hadskip.sh teacher
  for m in "${methods[@]}"; do
    compresskit apply "benchmarks/recipes/early_exit/$m.yaml" -o "runs/ee-$m$suffix" --set "model=$finetuned" \
      --set "stages.exit.exit_pooling=$pooling"
  done
}
curves() {
  local args=()
  for m in deebert pabee berxit pcee consistentee consistentee-r0; do
    [ -d "runs/ee-$m$suffix/stages/00-exit/model" ] && args+=("$m=runs/ee-$m$suffix/stages/00-exit/model")
  done
  for k in 1 2 3 4 5; do
    [ -d "runs/budgeted-exit-k$k/stages/00-first_k/model" ] &&
      args+=(--point "budgeted-exit@$k=runs/budgeted-exit-k$k/stages/00-first_k/model")
  done
  python benchmarks/exit_curve.py "${args[@]}" --reference "MiniLM-L6 fine-tuned=$finetuned" \
    --output "docs/results/early_exit/curves$suffix.json" --plot "docs/results/early_exit/curves$suffix.png"
}
for step in "${@:-train curves}"; do
  for s in $step; do "$s"; done
done
