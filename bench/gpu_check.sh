#!/usr/bin/env bash
# The GPU measurements in one call on a lent machine (see docs/benchmarks.md): training throughput and MFU
# of the gpt2 preset vs GPT2LMHeadModel, the largest micro-batch, the GPU tests, and a short real run of
# the trainer on the bundled book. Logs go to $OUT (or ./out). Wheels the image lacks travel in .whl/.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CI=true
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD/src:/tmp/site
else
  export PYTHONPATH=$PWD/src
fi
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
step() { local t=$1 name=$2; shift 2; echo "== $name"; timeout "$t" "$@" 2>&1 | tee "$OUT/$name.log" | tail -15; echo "== $name rc=${PIPESTATUS[0]}"; }
step 170 bench_train python3 bench/train.py --device cuda --preset gpt2 --vocab 50257 --batch 16 --compile \
  --rounds 1 --steps 40 --activation gelu_tanh
step 120 max_batch python3 bench/train.py --device cuda --preset gpt2 --vocab 50257 --batch 16 --compile \
  --find-max-batch --activation gelu_tanh
step 100 pytest_gpu python3 -m pytest -q -m gpu -p no:cacheprovider
step 170 wp_gpt2 python3 - <<'PY'
from scratchlm.config import PRESETS, RunConfig
from scratchlm.commands.eval import evaluate
from scratchlm.commands.prepare import prepare
from scratchlm.commands.train import train
cfg = RunConfig.from_dict(PRESETS["gpt2"])
prepare("/tmp/wp", cfg)
# One book is ~1M tokens: 32k tokens a step, a short warmup, and a time cap as a safety net.
cfg.train.device, cfg.train.grad_accum, cfg.train.warmup_steps, cfg.train.lr = "cuda", 2, 30, 6e-4
cfg.train.max_steps, cfg.train.max_minutes, cfg.train.eval_interval = 800, 2.0, 100
train("/tmp/wp", cfg, resume=False)
evaluate("/tmp/wp")
PY
cp /tmp/wp/metrics.csv "$OUT/wp_gpt2_metrics.csv" 2>/dev/null
cp /tmp/wp/config.yaml "$OUT/wp_gpt2_config.yaml" 2>/dev/null
