"""End to end: prepare → train → eval → sample on a slice of the bundled book."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import yaml

import scratchlm
from scratchlm.checkpoint import step_dirs
from scratchlm.evaluation import evaluate_runs as evaluate
from scratchlm.run import Run
from scratchlm.sampling import write_samples as sample
from scratchlm.tokenizer import Tokenizer


def test_loss_goes_down(trained_run):
    rows = list(csv.DictReader(open(Run.at(trained_run).metrics_path)))
    train_losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    val_losses = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert rows[0]["step"] == "1" and abs(train_losses[0] - math.log(600)) < 0.3  # starts near uniform
    assert train_losses[-1] < train_losses[0] - 1.0
    assert len(val_losses) == 2 and val_losses[-1] < val_losses[0]


def test_run_directory_holds_every_artifact(trained_run):
    run = Run.at(trained_run)
    evaluate(trained_run)
    sample(trained_run, "The", scratchlm.RunConfig().sample)
    for path in (
        run.config_path,
        run.metrics_path,
        run.loss_plot_path,
        run.eval_path,
        run.samples_path,
        run.data_dir / "manifest.json",
        run.checkpoints_dir / "best.safetensors",
    ):
        assert path.is_file(), path
    cfg = yaml.safe_load(run.config_path.read_text())
    assert cfg["model"]["n_layer"] == 2 and cfg["model"]["vocab_size"] == 600
    assert run.loss_plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(step_dirs(run)) == 2  # keep_last
    manifest = json.loads((run.data_dir / "manifest.json").read_text())
    tok = Tokenizer.load(run.tokenizer_dir)
    assert manifest["tokenizer_hash"] == tok.hash
    train_tokens = np.memmap(run.data_dir / "train_000.bin", dtype=np.uint16, mode="r")
    assert train_tokens.size == manifest["splits"]["train"][0]["tokens"] and train_tokens.max() < 600
    result = json.loads(run.eval_path.read_text())
    assert 0 < result["bits_per_byte"] < 8 and result["perplexity"] > 1


def test_eval_beats_unigram_entropy(trained_run):
    run = Run.at(trained_run)
    tokens = np.fromfile(run.data_dir / "train_000.bin", dtype=np.uint16)
    p = np.bincount(tokens) / tokens.size
    unigram = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert evaluate(trained_run)["loss"] < unigram


def test_load_and_generate_is_deterministic(trained_run):
    lm = scratchlm.load(trained_run)
    a = lm.generate("Prince Andrew", max_new_tokens=30, seed=7)
    b = lm.generate("Prince Andrew", max_new_tokens=30, seed=7)
    c = lm.generate("Prince Andrew", max_new_tokens=30, seed=8)
    assert a == b and len(a) > 10
    assert a != c
    assert isinstance(lm.model, scratchlm.GPT)
