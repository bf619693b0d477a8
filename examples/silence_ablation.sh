#!/usr/bin/env bash
# Where silent branches come from: the branch-count experiment at its reduced budget
# (3 epochs on a fixed 10,000-image subset of the CIFAR-10 train split, activity probed on
# the bundled cifar10-sample), over head init, loss scheme, peak learning rate and M.
# Usage: examples/silence_ablation.sh DATA_ROOT OUT_DIR   (one thread; resumes from OUT_DIR/runs)
set -euo pipefail
data_root=${1:-../shared/data/cifar10}
out=${2:-silence-ablation}
probekit=${PROBEKIT:-probekit}
mkdir -p "$out"
run() {  # name, then branch-count flags
  local name=$1; shift
  "$probekit" show "$out/$name.zarr" 2>/dev/null | grep -q '^status: *complete' && { echo "$name: done"; return; }
  local again=(); [ -e "$out/$name.zarr" ] && again=(--overwrite)  # this script's own unfinished store
  echo "$name: $*"
  "$probekit" experiment branch-count --data-root "$data_root" --checkpoint-dir "$out/runs/$name" \
    --out "$out/$name.zarr" --quiet "${again[@]}" "$@"
}
run default-clamped-lr0.02 --head-init default --scheme clamped --max-lr 0.02 --branches 4,16,32
run default-logits-lr0.02 --head-init default --scheme logits --max-lr 0.02 --branches 16
run default-clamped-lr0.1 --head-init default --scheme clamped --max-lr 0.1 --branches 16
run zero-clamped-lr0.02 --head-init zero --scheme clamped --max-lr 0.02 --branches 4,16,32
run zero-logits-lr0.02 --head-init zero --scheme logits --max-lr 0.02 --branches 16
run zero-clamped-lr0.1 --head-init zero --scheme clamped --max-lr 0.1 --branches 16
