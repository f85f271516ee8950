"""The benchmark scripts keep running: a tiny shape through bench/train.py's CPU path (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def test_train_bench_runs_both_models_and_prints_the_ratio():
    pytest.importorskip("transformers")
    tiny = "--rounds 1 --steps 2 --warmup 1 --layers 1 --heads 2 --width 32 --block 16 --batch 2 --vocab 64"
    tiny = [*tiny.split(), "--activation", "gelu_tanh"]
    out = subprocess.run([sys.executable, str(BENCH / "train.py"), *tiny], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "batch 2 x 16" in out.stdout and "CPU, float32" in out.stdout
    assert "ratio scratchlm / GPT2LMHeadModel, gelu_new (its default):" in out.stdout


def test_train_bench_max_batch_search_needs_a_gpu():
    out = subprocess.run(
        [sys.executable, str(BENCH / "train.py"), "--find-max-batch"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--find-max-batch needs --device cuda" in out.stderr
