#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in two calls on a lent machine (15 minutes of device time in
# all, a machine's start included, so each part stays under ~6 minutes):
#
#   bash bench/gpu_kit.sh                    # here, once: wheels the device image lacks → .whl/, data → .gpu/
#   bash bench/gpu_check.sh gpu              # on the device (carry .whl and .gpu): the GPU goals
#   bash bench/gpu_check.sh cores            # on the device: `prepare` over 1-16 cores beside the peer
#
# gpu:   training throughput and MFU of the gpt2 preset vs GPT2LMHeadModel (batch 32, compiled, bf16); the
#        GPU speedrun (Tiny Shakespeare, characters, 60 s); `pytest -m gpu`; a real trainer run on the
#        bundled book under torchrun on every GPU (DDP), its micro-batch found by --train.batch-size auto.
# cores: bench/prepare.py's workers section (--data.workers 1, 2, 4, 8, 16) beside nanoGPT's
#        multiprocess tiktoken script, on a 100 MB JSONL corpus.
# Logs go to $OUT (or ./out); each step prints its last lines and its exit code.
set -u
part=${1:-gpu}
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CI=true
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD/src:/tmp/site
else
  export PYTHONPATH=$PWD/src
fi
DATA=${GPU_DATA:-.gpu}
step() { local t=$1 name=$2; shift 2; echo "== $name"; timeout "$t" "$@" 2>&1 | tee "$OUT/$name.log" | tail -15; echo "== $name rc=${PIPESTATUS[0]}"; }

if [ "$part" = cores ]; then
  nproc; uptime
  zcat src/scratchlm/assets/war_and_peace.txt.gz > /tmp/book.txt
  step 330 prepare_cores python3 bench/prepare.py --book /tmp/book.txt --sizes-mb --workers-mb 100 \
    --workers 1 2 4 8 16
  exit 0
fi

nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
step 150 bench_train python3 bench/train.py --device cuda --preset gpt2 --vocab 50257 --batch 32 --compile \
  --rounds 1 --steps 30 --activation gelu_tanh
step 130 speedrun python3 bench/speedrun.py --skip-reference --input "$DATA/tinyshakespeare.txt" \
  --config configs/shakespeare-char-gpu-speedrun.yaml
step 90 pytest_gpu python3 -m pytest -q -m gpu -p no:cacheprovider
gpus=$(nvidia-smi -L | wc -l)
python3 - <<'PY'
from scratchlm.commands.prepare import prepare
from scratchlm.config import PRESETS, RunConfig
prepare("/tmp/wp", RunConfig.from_dict(PRESETS["gpt2"]))  # the bundled book, 4,096-piece Unigram
PY
# One book is ~0.85M tokens: 32k tokens a step, a short warmup, 1.5 minutes on the clock.
step 170 wp_gpt2 python3 -m torch.distributed.run --nproc_per_node="$gpus" -m scratchlm train /tmp/wp \
  --preset gpt2 --train.device cuda --train.batch-size auto --train.batch-tokens 32768 \
  --train.warmup-steps 30 --train.lr 6e-4 --train.max-minutes 1.5 --train.eval-interval 100 --fresh
step 60 wp_eval python3 -m scratchlm eval /tmp/wp
cp /tmp/wp/metrics.csv "$OUT/wp_gpt2_metrics.csv" 2>/dev/null
cp /tmp/wp/config.yaml "$OUT/wp_gpt2_config.yaml" 2>/dev/null
