#!/usr/bin/env bash
# The prepared GPU check (issues 11, 27): under 8 minutes on one GPU, everything under $OUT,
# and never empty: every step writes its own results the moment it ends.
#
#   benchmarks/gpu/check.sh                       # on the lent GPU machine (device tool)
#   OUT=/tmp/check benchmarks/gpu/check.sh --device cpu --dry-run   # CPU smoke test (tests)
#
# Steps, each in its own time box (seconds on a GPU; the dry run's are in the DRY column):
#   preflight        imports, device (GPUs, native bf16, a matmul), backends, data
#                    -> $OUT/preflight.json, $OUT/machine.txt                  30   (DRY 30)
#   ddp              a real two-rank process group: `torchrun --nproc-per-node 2`, NCCL when
#                    the machine has >= 2 GPUs, else gloo with CUDA tensors on the one GPU
#                    (the engine chooses); 2 epochs, checkpoint, test loss -> $OUT/ddp.log
#                                                                               60   (DRY 40)
#   throughput-V     one step-time table per variant V of $CHECK_VARIANTS (default
#                    "fp32 bf16"; "compile" and "bf16+contiguous" are worth adding when the
#                    budget allows) -> $OUT/throughput-V.{json,md}      40 each   (DRY fp32, 40)
#   sync-free-M      50 pipelined steps of model M (mmvae_plus, mopoe; mini settings) with
#                    the loss read every step and read once per window (the engine's
#                    sync-free step), ratio -> $OUT/sync_free.md       30 each   (DRY mmvae, 30)
#   make-polymnist   PolyMNIST from the MNIST files and backgrounds under $CHECK_DATA
#                    (default data/shared: copy ../shared/data there and name it in the
#                    device tool's carry)                                        90   (DRY -)
#   estimate         the wall time of every full recipe, from steps timed in the precision
#                    the recipe trains in (--precision auto) -> $OUT/reproduce_estimate.txt,
#                    one line per recipe as it is timed                          45   (DRY 40)
#   recipe           the MMVAE+ paper recipe with coherence (classifiers trained and applied
#                    on the GPU) after every epoch -> $OUT/recipe_curve.jsonl: the rest of
#                    the budget                                                rest  (DRY 60)
# After each step a line "name status seconds box" is appended to $OUT/steps.tsv (and
# printed), so whatever ends the check, the steps that finished have left their results.
# Packages the GPU image lacks (pyro-ppl, pyro-api, arviz and its needs) travel as wheels in
# .whl/ (see /work/.library/device/README.md); they are installed into /tmp/site first.
# A failing step does not stop the others; the exit status is the number of failed or
# skipped steps. The whole check has one budget, CHECK_SECONDS (default 450 s, under the 8
# minutes asked and the device tool's 600 s per command): a step's box is cut to what is left
# of it. CHECK_BOX_SCALE multiplies every box and the budget (default 1; 2 in a dry run).
set -uo pipefail
DEVICE=cuda
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-/tmp/pyro_mmvae_gpu_check}"
CHECK_DATA="${CHECK_DATA:-data/shared}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PY="${PYTHON:-python3}"
failed=0
# a dry run is a smoke test on whatever CPU runs it (a loaded 2-core CI machine): boxes x2
if [ "$DRY" = 1 ]; then BOX_SCALE="${CHECK_BOX_SCALE:-2}"; else BOX_SCALE="${CHECK_BOX_SCALE:-1}"; fi
BUDGET=$(( ${CHECK_SECONDS:-450} * BOX_SCALE ))
printf 'step\tstatus\tseconds\tbox\n' > "$OUT/steps.tsv"
remaining() { echo $(( BUDGET - SECONDS )); }
record() {  # record NAME STATUS SECONDS BOX
  printf '%s\t%s\t%s\t%s\n' "$@" >> "$OUT/steps.tsv"
  echo "== $1: $2 ($3 s of a ${4} s box)"
}
step() {  # step NAME SECONDS LOG COMMAND...   (LOG: a file under $OUT, or - for stdout)
  local name="$1" seconds=$(( $2 * BOX_SCALE )) log="$3" left tic status
  shift 3
  left=$(remaining)
  if [ "$left" -lt "$seconds" ]; then seconds=$left; fi
  if [ "$seconds" -lt 10 ]; then
    echo "== $name: SKIPPED (budget spent)"; record "$name" skipped 0 "$seconds"
    failed=$((failed + 1)); return
  fi
  echo "== $name (time box ${seconds}s)"
  tic=$SECONDS
  if [ "$log" = - ]; then
    timeout --kill-after=10 "$seconds" "$@"; status=$?
  else
    timeout --kill-after=10 "$seconds" "$@" > "$log" 2>&1; status=$?
  fi
  if [ "$status" = 0 ]; then record "$name" ok $((SECONDS - tic)) "$seconds"
  elif [ "$status" = 124 ] || [ "$status" = 137 ]; then
    record "$name" timeout $((SECONDS - tic)) "$seconds"; failed=$((failed + 1))
  else record "$name" "failed($status)" $((SECONDS - tic)) "$seconds"; failed=$((failed + 1))
  fi
}
date -u > "$OUT/machine.txt"

if [ "$DRY" = 1 ]; then
  step preflight 30 "$OUT/machine.txt" "$PY" benchmarks/gpu/preflight.py --device "$DEVICE" \
    --json "$OUT/preflight.json"
  # one small rank-shard per process, one epoch: the group, DDP, the epoch-end collective
  MINI_SMALL=64,32 step ddp 40 "$OUT/ddp.log" "$PY" -m torch.distributed.run \
    --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "${CHECK_PORT:-29512}" \
    benchmarks/gpu/launch.py train --dataset mini-small --epochs 1 --batch-size 32 \
    --device "$DEVICE" --precision 32 --out "$WORK/ddp" --no-progress --no-evaluate \
    --set 'hidden=[32]'
  step throughput-fp32 40 - "$PY" benchmarks/throughput.py --dry-run --device "$DEVICE" \
    --recipes mmvae_plus_polymnist --json "$OUT/throughput-fp32.json" \
    --md "$OUT/throughput-fp32.md"
  step estimate 40 "$OUT/reproduce_estimate.txt" "$PY" benchmarks/gpu/estimate.py \
    --device "$DEVICE" --precision 32 --rows mmvae --dataset polymnist-mini --batch-size 2 \
    --steps 1 --warmup 0
  step sync-free 30 - "$PY" benchmarks/gpu/sync_free.py --device "$DEVICE" --model mmvae \
    --precision 32 --batch-size 8 --steps 3 --rounds 1 --out "$OUT/sync_free.md"
  MINI_SMALL=64,32 step recipe 60 - "$PY" benchmarks/gpu/recipe_curve.py --model mmvae \
    --preset "" --dataset mini-small --device "$DEVICE" --precision 32 --minutes 0.1 \
    --max-epochs 1 --set 'hidden=[32]' --out "$WORK/recipe" --curve "$OUT/recipe_curve.jsonl"
else
  step preflight 30 "$OUT/machine.txt" "$PY" benchmarks/gpu/preflight.py --device "$DEVICE" \
    --data "$CHECK_DATA" --json "$OUT/preflight.json"
  step ddp 60 "$OUT/ddp.log" "$PY" -m torch.distributed.run --nproc-per-node 2 \
    --master-addr 127.0.0.1 --master-port "${CHECK_PORT:-29512}" benchmarks/gpu/launch.py \
    train --dataset mini-small --epochs 2 --batch-size 64 --device "$DEVICE" \
    --out "$WORK/ddp" --no-progress --no-evaluate --set 'hidden=[64]'
  for variant in ${CHECK_VARIANTS:-fp32 bf16}; do
    step "throughput-$variant" 40 - "$PY" benchmarks/throughput.py --device "$DEVICE" \
      --batches 128 --variants "$variant" --rounds 3 --warmup 2 \
      --json "$OUT/throughput-$variant.json" --md "$OUT/throughput-$variant.md"
  done
  for model in mmvae_plus mopoe; do  # small steps, where the host's share is largest
    step "sync-free-$model" 30 - "$PY" benchmarks/gpu/sync_free.py --device "$DEVICE" \
      --model "$model" --steps 50 --rounds 3 --out "$OUT/sync_free.md"
  done
  POLY="$WORK/polymnist"
  step make-polymnist 90 - "$PY" -m pyro_mmvae make-polymnist --mnist-root "$CHECK_DATA/mnist" \
    --backgrounds "$CHECK_DATA/polymnist_backgrounds" --out "$POLY" --workers 16
  step estimate 45 - "$PY" benchmarks/gpu/estimate.py --device "$DEVICE" --precision auto \
    --rows all --steps 4 --polymnist "$POLY" --out "$OUT/reproduce_estimate.txt"
  # train for what is left of the budget, less 40 s for the last epoch's evaluation and exit
  MINUTES=$(awk -v s="$(remaining)" 'BEGIN { m = (s - 40) / 60; print (m < 0.5 ? 0.5 : m) }')
  step recipe 600 - "$PY" benchmarks/gpu/recipe_curve.py --device "$DEVICE" --precision auto \
    --data-root "$POLY" --minutes "$MINUTES" --out "$WORK/recipe" \
    --curve "$OUT/recipe_curve.jsonl"
fi
echo "failed steps: $failed"
cat "$OUT/steps.tsv"
exit "$failed"
