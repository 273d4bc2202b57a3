#!/usr/bin/env bash
# Issue-7 results (docs/benchmarks.md, "HadSkip"): HadSkip at budgets 2, 3, 4 on the fine-tuned
# MiniLM-L6, the budgeted-exit baselines at the same depths, the ablations at budget 3, latency.
# Usage: bash benchmarks/hadskip.sh [teacher|main|full|predkd|baselines|ablations|predkd_ablations|latency|table] ...
# (default: all but `full`, in order; HADSKIP_BUDGETS="2 3 4" for `full` at every budget)
set -euo pipefail
cd "$(dirname "$0")/.."
finetuned=runs/minilm-l6-2ep/stages/00-finetuned/model
# The training rows each HadSkip run sees (CPU time: ~1 s per step of 32 on two cores).
extra=(--set "model=$finetuned" --set "data.max_train_samples=${HADSKIP_TRAIN_ROWS:-5000}")
hadskip=benchmarks/recipes/hadskip_rotten_tomatoes.yaml
# `full`: every training row and lr 5e-5 (the top of the paper's grid), twice the steps of `main`
full_settings=(--set "model=$finetuned" --set data.max_train_samples=null --set stages.skip.learning_rate=5e-5)

teacher() {  # the fine-tuned MiniLM-L6 every run below starts from (stage I); a no-op once finished
  compresskit apply recipes/finetune_rotten_tomatoes.yaml -o runs/minilm-l6-2ep --set stages.finetuned.epochs=2
}
main() {
  for s in 2 3 4; do
    compresskit apply "$hadskip" -o "runs/hadskip-b$s" "${extra[@]}" --set "stages.skip.budget=$s"
  done
}
full() {
  for s in ${HADSKIP_BUDGETS:-3}; do
    compresskit apply "$hadskip" -o "runs/hadskip-full-b$s" "${full_settings[@]}" --set "stages.skip.budget=$s"
  done
}
baselines() {
  for k in ${BASELINE_KS:-2 3 4}; do
    compresskit apply benchmarks/recipes/budgeted_exit_rotten_tomatoes.yaml -o "runs/budgeted-exit-k$k" \
      --set "model=$finetuned" --set "stages.first_k.k=$k"
  done
}
# `predkd`: the best settings found (docs/benchmarks.md): `full`, but prediction-only distillation,
# straight to the budget (no homotopy), 3 epochs there
predkd_settings=("${full_settings[@]}" --set stages.skip.homotopic=false --set stages.skip.epochs_per_budget=3
                 --set stages.skip.alpha_hidden=0 --set stages.skip.alpha_attention=0 --set stages.skip.alpha_embedding=0)
predkd() {
  for s in ${HADSKIP_BUDGETS:-2 3 4}; do
    compresskit apply "$hadskip" -o "runs/hadskip-full-b$s-predkd-direct3" "${predkd_settings[@]}" --set "stages.skip.budget=$s"
  done
}
ablations() {  # at budget 3 on the `full` settings, against runs/hadskip-full-b3; ABLATIONS picks and orders
  declare -A switch=([no-kd]=stages.skip.distill=false [no-homotopy]=stages.skip.homotopic=false
                     [no-stage2]=stages.skip.gate_epochs=0 [ste]=stages.skip.estimator=ste)
  for a in ${ABLATIONS:-no-kd no-homotopy no-stage2 ste}; do
    compresskit apply "$hadskip" -o "runs/hadskip-full-b3-$a" "${full_settings[@]}" --set "${switch[$a]}"
  done
}
predkd_ablations() {  # the same switches on the `predkd` settings at budget 3, against runs/hadskip-full-b3-predkd-direct3
  # SEED=43 ABLATIONS=ste: another seed of one ablation (runs/hadskip-predkd-b3-ste-seed43)
  declare -A switch=([no-kd]=stages.skip.distill=false [no-stage2]=stages.skip.gate_epochs=0
                     [ste]=stages.skip.estimator=ste)
  for a in ${ABLATIONS:-no-kd no-stage2 ste}; do
    compresskit apply "$hadskip" -o "runs/hadskip-predkd-b3-$a${SEED:+-seed$SEED}" "${predkd_settings[@]}" \
      --set stages.skip.budget=3 --set "${switch[$a]}" --set "seed=${SEED:-42}"
  done
}
latency() {  # every finished HadSkip model (main, full, predkd, ablations)
  for run in runs/hadskip-b[234] runs/hadskip-full-b* runs/hadskip-predkd-b3-*; do
    [ -d "$run/stages/00-skip/model" ] || continue
    python benchmarks/dynamic_latency.py "$run/stages/00-skip/model" --batch-sizes 1,32 --output "$run/latency.json"
  done
}
table() {
  python benchmarks/summarize_hadskip.py runs
}
for step in "${@:-teacher main baselines ablations latency table}"; do
  for s in $step; do "$s"; done
done
