"""Evaluation: bits per byte and perplexity by hand on a toy model, the sliding window, the reports."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import scratchlm.evaluation
from scratchlm.cli import main
from scratchlm.config import EvalConfig, ModelConfig
from scratchlm.data.corpus import clean
from scratchlm.data.shards import open_split
from scratchlm.evaluation import evaluate_runs as evaluate
from scratchlm.scoring import evaluate_loss, score_tokens, sliding_windows
from scratchlm.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


class Bigram(nn.Module):
    """A toy model whose logits we control: the next-token logits are a row of `table` picked by the
    current token, whatever the context, so the total loss has a closed form."""

    def __init__(self, table: torch.Tensor, block_size: int):
        super().__init__()
        self.config = ModelConfig(vocab_size=table.shape[1], block_size=block_size)
        self.transformer = nn.ModuleDict({"wte": nn.Embedding.from_pretrained(table)})

    def forward(self, idx, targets=None):
        return self.transformer.wte(idx), None  # (B, T, vocab)


def test_loss_perplexity_and_bits_per_byte_by_hand():
    rng = np.random.default_rng(0)
    vocab, block = 5, 4
    table = rng.normal(size=(vocab, vocab))
    tokens = rng.integers(0, vocab, size=23)
    token_bytes = np.array([1, 2, 3, 1, 4])
    # By hand: -log softmax(table[prev])[next] for every token but the first.
    nats = 0.0
    for prev, nxt in zip(tokens[:-1], tokens[1:], strict=True):
        row = table[prev]
        nats += math.log(sum(math.exp(v) for v in row)) - row[nxt]
    n_bytes = int(sum(token_bytes[t] for t in tokens[1:]))
    model = Bigram(torch.tensor(table, dtype=torch.float64), block)
    for stride in (1, 2, 3, 4):
        for batch_size in (1, 3):
            got = score_tokens(model, tokens, stride, batch_size, token_bytes)
            assert got["tokens"] == 22 and got["bytes"] == n_bytes
            assert got["loss"] == pytest.approx(nats / 22, rel=1e-6)
            assert got["perplexity"] == pytest.approx(math.exp(nats / 22), rel=1e-6)
            assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-6)


def test_uniform_model_has_perplexity_vocab():
    model = Bigram(torch.zeros(7, 7), block_size=8)
    got = score_tokens(model, np.arange(30) % 7, stride=3, batch_size=4, token_bytes=np.full(7, 2))
    assert got["perplexity"] == pytest.approx(7.0, rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(math.log2(7) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "n, block, stride", [(2, 4, 4), (5, 4, 4), (23, 4, 1), (23, 4, 3), (100, 16, 5), (17, 16, 16)]
)
def test_sliding_windows_score_each_token_once_with_context(n, block, stride):
    counts = np.zeros(n, dtype=int)
    for start, end, first in sliding_windows(n, block, stride):
        assert 0 <= start < first < end <= n and end - start <= block + 1
        for pos in range(first, end):
            counts[pos] += 1
            assert pos - start >= min(pos, block - stride + 1)  # tokens of context before pos
    assert counts[0] == 0 and (counts[1:] == 1).all()


def test_stride_equal_to_context_matches_the_training_estimate(trained_run):
    from scratchlm import load

    lm = load(trained_run)
    shards = open_split(trained_run / "data", "val")
    token_bytes = lm.tokenizer.token_bytes()
    # Whole windows only: a short last window has less context in the quick estimate than in the
    # sliding one (which starts it a full context back), so their losses differ there by design.
    tokens = np.asarray(shards.arrays[0])
    tokens = tokens[: 1 + 64 * ((tokens.size - 1) // 64)]
    shards.arrays = [tokens]
    bos = lm.tokenizer.bos_id
    quick = evaluate_loss(lm.model, shards, 8, "cpu", token_bytes=token_bytes, skip_id=bos)
    full = score_tokens(lm.model, tokens, 64, 8, token_bytes, skip_id=bos)
    assert full["tokens"] == quick["tokens"] and full["bytes"] == quick["bytes"]
    assert full["loss"] == pytest.approx(quick["loss"], rel=1e-5)


def test_eval_of_a_text_file_cleans_it_as_the_runs_prepare_did(trained_run, tmp_path, monkeypatch):
    """A wrapped file's line ends are joined for a run prepared with the default --data.unwrap true, and
    kept for one prepared with false: its score then compares with that run's val split."""
    paragraph = "Prince Andrew looked at the sky above him and thought of nothing at all for a while. " * 4
    text = "\n\n".join(textwrap.fill(paragraph.strip(), 60) for _ in range(8))
    path = tmp_path / "wrapped.txt"
    path.write_text(text, encoding="utf-8")
    cfg = EvalConfig(text=str(path), stride=32, prompts=[])
    tok = Tokenizer.load(trained_run / "tokenizer")
    joined = evaluate(trained_run, cfg)["tokens"]
    load = scratchlm.evaluation.load

    def load_unwrap_false(*args, **kwargs):
        lm = load(*args, **kwargs)
        lm.config.data.unwrap = False
        return lm

    monkeypatch.setattr(scratchlm.evaluation, "load", load_unwrap_false)
    kept = evaluate(trained_run, cfg)["tokens"]
    assert joined == len(tok.encode("\n\n".join(paragraph.strip() for _ in range(8)))) + 1
    assert kept == len(tok.encode(text)) + 1 and kept != joined


def test_eval_of_a_text_file_scores_all_its_bytes_and_writes_the_reports(trained_run, tmp_path):
    # No final newline: --text is cleaned like training text, and cleaning drops a trailing one.
    text = "\n".join(["Prince Andrew looked at Natasha. — Ça va? 吾輩は猫である。"] * 12)
    path = tmp_path / "chapter.txt"
    path.write_text(text, encoding="utf-8")
    cfg = EvalConfig(text=str(path), stride=16, prompts=["", "The"], sample_tokens=12)
    result = evaluate(trained_run, cfg)
    tok = Tokenizer.load(trained_run / "tokenizer")
    # Scored as prepare would store it: cleaned like a training document (its final newline goes, as
    # documents end with <|eos|>), and then every byte of it counts, the first included.
    cleaned = clean(text, gutenberg=False)
    assert cleaned == text.rstrip("\n")
    assert result["bytes"] == len(cleaned.encode("utf-8"))
    assert result["tokens"] == len(tok.encode(cleaned)) + 1  # the text's tokens and the final <|eos|>
    assert math.isfinite(result["bits_per_byte"]) and result["bits_per_byte"] > 0 and result["stride"] == 16
    saved = json.loads((trained_run / "eval.json").read_text())
    assert saved["loss"] == result["loss"] and saved["source"] == str(path)
    assert [s["prompt"] for s in saved["samples"]] == ["", "The"]
    report = (trained_run / "report.md").read_text()
    for needle in (
        "![loss curve](loss.png)",
        "bits per byte",
        f"{result['parameters']:,}",
        "n_layer: 2",
        "```text",
    ):
        assert needle in report
    assert saved["tokens_seen"] == 60 * 8 * 64 and saved["train_seconds"] > 0
    samples = (trained_run / "samples.txt").read_text()
    assert samples.count("--- eval, step 60, seed 1234") == 2
    # Fixed prompts and seeds: evaluating again gives the same samples.
    again = evaluate(trained_run, cfg)
    assert again["samples"] == result["samples"] and again["loss"] == result["loss"]


def test_eval_of_jsonl_uses_the_text_field(trained_run, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"body": "The war began."}\n\n{"body": "Natasha smiled."}\n', encoding="utf-8")
    result = evaluate(trained_run, EvalConfig(jsonl=str(path), text_field="body", prompts=[]))
    assert result["bytes"] == len(b"The war began.Natasha smiled.")
    # Each record is <|bos|> text <|eos|>: its text and its <|eos|> are scored, the <|bos|> between
    # records (always predictable after <|eos|>) is not.
    tok = Tokenizer.load(trained_run / "tokenizer")
    assert result["tokens"] == len(tok.encode("The war began.")) + len(tok.encode("Natasha smiled.")) + 2


def test_several_runs_print_a_comparison_table(trained_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    args = ["eval", str(trained_run), str(other), "--prompts", "[]", "--checkpoint", "last"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "scored tokens" in line) :]
    assert "bits/byte" in table[0] and table[1].startswith("---")
    assert table[2].startswith(str(trained_run)) and table[3].startswith(str(other))
    assert (other / "report.md").is_file() and (trained_run / "report.md").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "missing.txt"], "--text missing.txt: no such file"),
        (["--text", "a.jsonl", "--jsonl", "a.jsonl"], "give --text or --jsonl, not both"),
        (
            ["--jsonl", "a.jsonl", "--text_field", "body"],
            "a.jsonl:1: no field 'body' (it has: text); set --text_field",
        ),
        (["--jsonl", "bad.jsonl"], "bad.jsonl:2: not valid JSON"),
        (["--stride", "65"], "--stride 65: must be between 1 and the context length 64"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: no CUDA device is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_eval_mistakes_are_one_line_errors(trained_run, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "hello"}\n{nope\n')
    assert main(["eval", str(trained_run), "--prompts", "[]", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_comparison_table_warns_when_tokenizers_differ():
    from scratchlm.evaluation import comparison_table

    def result(run, tok_hash, bpb):
        return {
            "run": run, "step": 10, "parameters": 1000, "tokens_seen": None, "loss": 2.0,
            "perplexity": 7.39, "bits_per_byte": bpb, "tokens": 50, "tokenizer": {"hash": tok_hash},
        }  # fmt: skip

    same = comparison_table([result("runs/a", "h1", 1.25), result("runs/b", "h1", 1.5)])
    assert "1.2500" in same and "1.5000" in same and "n/a" in same and "different tokenizers" not in same
    mixed = comparison_table([result("runs/a", "h1", 1.25), result("runs/char", "h2", 1.5)])
    assert mixed.splitlines()[-1].startswith("(the runs use different tokenizers: compare bits/byte")
