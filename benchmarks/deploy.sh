#!/usr/bin/env bash
# Issue-6 results (docs/benchmarks.md, "Deploy"): ONNX Runtime vs PyTorch agreement for every
# strategy's model, and ONNX Runtime speed-ups of the exported models (dynamic ones against their
# ideal L / average executed layers; the 3-layer HadSkip models, the default recipe's among them, against
# the exported MPNet teacher).
# Usage: bash benchmarks/deploy.sh [agreement|latency] ...   (default: both)
# Needs the runs of benchmarks/hadskip.sh, early_exit.sh and static.sh; models not there are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/results/deploy
mkdir -p "$out"
declare -A models=(
  [minilm-l6]=runs/minilm-l6-2ep/stages/00-finetuned/model
  [mpnet-12-teacher]=runs/static-tinybert/stages/00-teacher/model
  [tinybert-student]=runs/static-tinybert/stages/01-student/model
  [structured-prune]=runs/static-prune/stages/01-recovered/model
  [layer-prune-greedy]=runs/static-layers-greedy/stages/01-recover/model
  [cost-eff]=runs/static-cost-eff/stages/00-slim/model
  [hadskip-b3]=runs/hadskip-full-b3-predkd-direct3/stages/00-skip/model
  [hadskip-b4]=runs/hadskip-full-b4-predkd-direct3/stages/00-skip/model
  [budgeted-exit-k3]=runs/budgeted-exit-k3/stages/00-first_k/model
  [deebert]=runs/ee-deebert/stages/00-exit/model
  [pabee]=runs/ee-pabee/stages/00-exit/model
  [berxit]=runs/ee-berxit/stages/00-exit/model
  [pcee]=runs/ee-pcee/stages/00-exit/model
  [consistentee]=runs/ee-consistentee/stages/00-exit/model
  [deebert-mean]=runs/ee-deebert-mean/stages/00-exit/model
  [pabee-mean]=runs/ee-pabee-mean/stages/00-exit/model
  [berxit-mean]=runs/ee-berxit-mean/stages/00-exit/model
  [pcee-mean]=runs/ee-pcee-mean/stages/00-exit/model
  [consistentee-mean]=runs/ee-consistentee-mean/stages/00-exit/model
  [consistentee-r0-mean]=runs/ee-consistentee-r0-mean/stages/00-exit/model
  [default-recipe]=runs/tinybert_hadskip/stages/02-skip/model
)
present() { for name in "$@"; do [ -d "${models[$name]}" ] && echo "$name"; done; }

agreement() {
  args=()
  for name in $(present "${!models[@]}" | sort); do args+=("$name=${models[$name]}"); done
  python benchmarks/export_check.py "${args[@]}" --exports runs/exports --int8 --output "$out/agreement.json" \
    | tee "$out/agreement.md"
}
latency() {  # one thread: the ratios are what matters; exports from `agreement`
  dynamic=(hadskip-b3 hadskip-b4 budgeted-exit-k3 deebert pabee berxit pcee consistentee cost-eff
           deebert-mean pabee-mean berxit-mean pcee-mean consistentee-mean consistentee-r0-mean default-recipe)
  paths=(runs/exports/minilm-l6)
  for name in "${dynamic[@]}"; do [ -d "runs/exports/$name" ] && paths+=("runs/exports/$name"); done
  compresskit benchmark "${paths[@]}" --batch-sizes 1,32 --threads 1 --output "$out/ort_dynamic.json"
  if [ -d runs/exports/mpnet-12-teacher ]; then
    teacher=(runs/exports/mpnet-12-teacher runs/exports/minilm-l6 runs/exports/hadskip-b3 runs/exports/hadskip-b3:int8)
    [ -d runs/exports/default-recipe ] && teacher+=(runs/exports/default-recipe runs/exports/default-recipe:int8)
    compresskit benchmark "${teacher[@]}" --batch-sizes 1,32 --threads 1 --output "$out/ort_vs_teacher.json"
  fi
}
for step in "${@:-agreement latency}"; do
  for s in $step; do "$s"; done
done
