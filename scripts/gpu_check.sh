#!/usr/bin/env bash
# The one prepared run on a CUDA GPU (the device tool's H100/H200; issues 13, 15 and 25), ~10 minutes:
#   1. the machine (nvidia-smi, torch), 2. tests/test_cuda.py (the CUDA path against the CPU one),
#   3. the teacher-choice study (Table 2) on the GPU in bf16, as far as 5 minutes take it: its teachers, then the
#      matched-convnet and transformer-teacher rows seed by seed, then none / token / hard (each run is recorded
#      as it ends, so a study cut off by the limit still brings back every finished run),
#   4. `deit bench` of deit_tiny/small/base_patch16_224 at batch 256, bf16, inference and training, against timm.
# Each step has its own time limit; a step that fails or runs out is reported and the next one runs.
#
# Usage, from the repository root:  scripts/gpu_check.sh OUT_DIR [FASHION_MNIST_DIR]
# With the device tool (the data travels in the ignored folder data/fashion-mnist, ~30 MB):
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   run(command="scripts/gpu_check.sh $OUT data/fashion-mnist", carry=["data/fashion-mnist"], timeout_s=600)
# GPU_CHECK_SMOKE=1 runs the same steps at toy scale on whatever device there is (a check of this script on a
# CPU machine: the CUDA tests skip, the study only plans, the bench times a tiny model).
# Everything lands in OUT_DIR as at most 5 files (the device tool brings back 8): gpu_check.log, summary.txt,
# pytest.xml, bench.jsonl, study.tar.gz (the study's results/ folder and its runs' logs, configs and metrics).
set -u
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [FASHION_MNIST_DIR]}
DATA=$(realpath "${2:-/usr/share/datasets/fashion-mnist}")
SMOKE=${GPU_CHECK_SMOKE:-0}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DEIT_FMNIST_DIR="$DATA"
LOG="$OUT/gpu_check.log"
START=$(date +%s)

# step NAME SECONDS COMMAND...: run it under a time limit, its output into the log, one line into summary.txt
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*" >>"$LOG"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    local verdict=$([ $rc -eq 0 ] && echo ok || { [ $rc -eq 124 ] && echo "timed out" || echo "failed (rc $rc)"; })
    echo "$name: $verdict in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt" >>"$LOG"
}

step machine 60 bash -c "nvidia-smi || true; $PY -c 'import torch, timm, sys; print(sys.version); \
print(\"torch\", torch.__version__, \"timm\", timm.__version__, \"cuda\", torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no CUDA device\")'; nproc; free -g"

step cuda-tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py --junitxml="$OUT/pytest.xml"

if [ "$SMOKE" = 1 ]; then
    STUDY=(--plan --estimate-steps 0 --device cpu --precision fp32)
    MODELS=(deit_micro_patch4_28)
    BENCH=(--batch-size 8 --precision fp32 --device cpu --windows 2 --threads 1)
else
    # In-memory data: RandAugment and the crops run in 12 worker processes, or the GPU would wait for them.
    STUDY=(--device cuda --precision bf16 --num-workers 12 --threads 2)
    MODELS=(deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224)
    BENCH=(--batch-size 256 --precision bf16 --device cuda --windows 3)
fi
step teacher-choice-study 300 "$PY" -m deit reproduce --preset fmnist-teacher-choice \
    --data-dir "$DATA" --output "$WORK/results" --runs-dir "$WORK/runs" --no-progress "${STUDY[@]}"

for model in "${MODELS[@]}"; do
    # the JSON line of each into bench.jsonl, the rest into the log
    step "bench-$model" 60 bash -c "$PY -m deit bench --model $model --mode both --compare timm --json ${BENCH[*]} \
        > $WORK/bench.json && cat $WORK/bench.json >> $OUT/bench.jsonl"
done

# The study's tables, and of each run everything but its weights
(cd "$WORK" && tar czf "$OUT/study.tar.gz" --exclude='*.safetensors' --exclude='*.pt' results runs 2>>"$LOG")
echo "total: $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
cat "$OUT/summary.txt"
rm -rf "$WORK"
