"""`scratchlm export --format onnx`: the transformers.js folder, its graph's names, and onnxruntime's logits
and greedy ids against scratchlm's, with the KV cache fed back as transformers.js feeds it."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import scratchlm
from scratchlm.cli import main
from scratchlm.config import ModelConfig
from scratchlm.formats.onnx import export_onnx
from scratchlm.model import GPT

from .conftest import missing_tool
from .test_export import greedy, make_run, prompt_ids, tiny_config

ort = importlib.import_module("onnxruntime") if importlib.util.find_spec("onnxruntime") else None

FLAVOURS = {
    "gpt2": dict(flavour="gpt2"),
    # GQA: 4 query heads share 2 key/value heads
    "llama": dict(flavour="llama", bias=False, n_head=4, n_kv_head=2, tie_embeddings=False),
}


@pytest.fixture(autouse=True)
def _needs_onnx():
    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")):
        missing_tool("needs onnx, onnxscript and onnxruntime: pip install 'scratchlm[onnx]'")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    from scratchlm.commands.prepare import prepare

    path = tmp_path_factory.mktemp("prepared") / "unigram"
    prepare(path, tiny_config(tiny_corpus))
    return {"unigram": path}


def feeds_for(ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> dict:
    """What transformers.js feeds: position_ids = cumsum(mask) - 1 (pads at 1), for the new tokens only."""
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)[:, -ids.shape[1] :]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}


def empty_past(session, batch: int) -> dict[str, np.ndarray]:
    return {
        i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values.")
    }


def run_step(session, ids, mask, past):
    """One session call: logits, and the present tensors renamed into the next call's past inputs."""
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds_for(ids, mask, past)), strict=True))
    nxt = {k.replace("present.", "past_key_values."): v for k, v in out.items() if k.startswith("present.")}
    return out["logits"], nxt


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_onnx_export_matches_scratchlm_with_kv_cache(prepared, tmp_path, flavour):
    run = make_run(prepared, tmp_path / "run", **FLAVOURS[flavour])
    out = tmp_path / "web"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == flavour and config["vocab_size"] == 600
    assert config["transformers.js_config"] == {"dtype": "fp32"}  # so it loads onnx/model.onnx

    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"))
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == [
        "input_ids", "attention_mask", "position_ids",
        "past_key_values.0.key", "past_key_values.0.value",
        "past_key_values.1.key", "past_key_values.1.value",
    ]  # fmt: skip
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    n_head = FLAVOURS[flavour].get("n_head", 2)
    kv_heads = FLAVOURS[flavour].get("n_kv_head", n_head)
    # (batch, kv_heads, past_len, head_dim): batch and past length dynamic, the rest fixed
    batch, heads, past_len, head_dim = inputs["past_key_values.1.value"]
    assert (
        isinstance(batch, str) and isinstance(past_len, str) and (heads, head_dim) == (kv_heads, 64 // n_head)
    )
    assert isinstance(inputs["input_ids"][1], str) and session.get_outputs()[0].shape[2] == 600

    lm = scratchlm.load(run)
    # A prompt whose greedy run on these random weights is no loop of one or two ids (the cache is used).
    ids = prompt_ids(lm, "Once upon a time")
    x = np.array([ids], dtype=np.int64)
    # (a) the prompt with an empty past
    logits, past = run_step(session, x, np.ones_like(x), empty_past(session, 1))
    with torch.no_grad():
        want = lm.model(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
    # (b) one decode step on the returned present tensors
    nxt = int(logits[0, -1].argmax())
    step = np.array([[nxt]], dtype=np.int64)
    logits, _ = run_step(session, step, np.ones((1, len(ids) + 1), np.int64), past)
    with torch.no_grad():
        want = lm.model(torch.tensor([ids + [nxt]]))[0][:, -1:].numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)

    # greedy decoding with the cache equals scratchlm's
    ours = greedy(lm, ids, 10)
    theirs, seq, past = [], list(ids), empty_past(session, 1)
    new = np.array([ids], dtype=np.int64)
    for _ in ours:
        logits, past = run_step(session, new, np.ones((1, len(seq)), np.int64), past)
        theirs.append(int(logits[0, -1].argmax()))
        seq.append(theirs[-1])
        new = np.array([[theirs[-1]]], dtype=np.int64)
    assert theirs == ours and len(set(ours)) > 3, (ours, theirs)


def test_onnx_left_padded_batch_equals_each_row_alone(prepared, tmp_path):
    """transformers.js batches prompts of different lengths with left padding (attention_mask 0): each row's
    logits, prompt and next step, are those of the row run alone."""
    run = make_run(prepared, tmp_path / "run", **FLAVOURS["llama"])
    out = tmp_path / "web"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"))
    lm = scratchlm.load(run)
    rows = [prompt_ids(lm, "Prince Andrew said that"), prompt_ids(lm, "Well")]
    width = max(map(len, rows))
    pad = lm.tokenizer.pad_id
    ids = np.array([[pad] * (width - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    logits, past = run_step(session, ids, mask, empty_past(session, 2))
    nxt = logits[:, -1].argmax(-1)
    step_logits, _ = run_step(
        session, nxt[:, None], np.concatenate([mask, np.ones((2, 1), np.int64)], 1), past
    )
    for b, r in enumerate(rows):
        with torch.no_grad():
            alone = lm.model(torch.tensor([r + [int(nxt[b])]]))[0][0].numpy()
        np.testing.assert_allclose(logits[b, width - len(r) :], alone[:-1], atol=1e-4, rtol=0)
        np.testing.assert_allclose(step_logits[b, 0], alone[-1], atol=1e-4, rtol=0)
    assert np.isfinite(logits).all()  # the padded queries see themselves: no NaN

    # --force replaces what export wrote (the onnx/ folder included) and keeps what the user added
    (out / "onnx" / "model.onnx").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert ort.InferenceSession(str(out / "onnx" / "model.onnx")).get_outputs()[0].name == "logits"


def test_onnx_graph_runs_qk_norm(tmp_path):
    """The wrapper runs model.py's own attention, QK-norm included (the hf config still refuses qk_norm, so
    this exports the graph alone)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        flavour="llama", vocab_size=100, block_size=32, n_layer=1, n_head=4, n_kv_head=2, n_embd=32,
        bias=False, qk_norm=True,
    )  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # norm gains off 1, so QK-norm shapes the output
    export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    ids = np.array([[3, 14, 15, 92, 65]], dtype=np.int64)
    logits, past = run_step(session, ids[:, :3], np.ones((1, 3), np.int64), empty_past(session, 1))
    step, _ = run_step(session, ids[:, 3:], np.ones((1, 5), np.int64), past)
    with torch.no_grad():
        want = model(torch.tensor(ids))[0].numpy()
    np.testing.assert_allclose(np.concatenate([logits, step], 1), want, atol=1e-4, rtol=0)
