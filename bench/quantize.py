"""File size and quality of each smaller export: bits per byte on the run's own validation split, as
`scratchlm eval RUN` scores it, computed by the program that would run each file.

    PYTHONPATH=src python bench/quantize.py RUN [--stride N] [--max-tokens N] [--threads 1]

Rows: scratchlm itself (torch, f32: the number `scratchlm eval RUN` prints, the peer of every ratio); the HF
export at --dtype bfloat16 in transformers, run in bfloat16 as `from_pretrained(dtype=torch.bfloat16)`
gives it and with its rounded weights upcast to float32; the GGUF export at f32, f16, q8_0 and q4_k_m in
llama.cpp (llama-cpp-python). Every row scores the same tokens: the val split's token stream, in the same
sliding windows of the model's context moved by --stride (default: half the context, as `scratchlm eval`),
each position scored once, <|bos|> targets not scored (scoring.py). bits/byte = nats / ln 2 / UTF-8 bytes of
the scored tokens. For q4_k_m the tensor types llama.cpp's quantizer chose are listed: K-quants need rows
that are a multiple of 256, and fall back per tensor otherwise.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import scratchlm
from scratchlm.config import EvalConfig
from scratchlm.evaluation import _eval_tokens  # the very stream `scratchlm eval RUN` scores
from scratchlm.formats import write_export
from scratchlm.run import Run
from scratchlm.scoring import score_tokens, sliding_windows

GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_k_m")


def score_windows(logits_of, tokens: np.ndarray, windows, token_bytes: np.ndarray, skip_id: int) -> float:
    """bits/byte from `logits_of(ids) -> (len(ids), vocab)` over scoring.sliding_windows' windows."""
    nats, nbytes = 0.0, 0
    for start, end, first in windows:
        ids = [int(t) for t in tokens[start:end]]
        logits = np.asarray(logits_of(ids[:-1]), dtype=np.float64)
        rows = np.arange(first - start - 1, len(ids) - 1)  # predictions of positions first..end-1
        targets = np.asarray(ids)[rows + 1]
        keep = targets != skip_id
        logp = logits[rows] - np.logaddexp.reduce(logits[rows], axis=1, keepdims=True)
        nats -= logp[np.arange(len(rows)), targets][keep].sum()
        nbytes += int(token_bytes[targets[keep]].sum())
    return nats / math.log(2) / nbytes


def llama_cpp_logits(path: Path, n_ctx: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False, logits_all=True)

    def logits_of(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])

    return llm, logits_of


def hf_logits(folder: Path, dtype: torch.dtype):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()

    @torch.inference_mode()
    def logits_of(ids: list[int]) -> np.ndarray:
        return model(torch.tensor([ids])).logits[0].float().numpy()

    return logits_of


def tensor_types(path: Path) -> str:
    """What each tensor of a GGUF file is stored as: 'q4_K x30, q6_K x7, ...'."""
    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors)
    return ", ".join(f"{k} x{v}" for k, v in counts.most_common())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--stride", type=int, default=0, help="default: half the context, as `scratchlm eval`")
    ap.add_argument("--max-tokens", type=int, default=0, help="score only the split's first N tokens")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = scratchlm.load(a.run)
    tok, block = lm.tokenizer, lm.config.model.block_size
    source, tokens = _eval_tokens(lm, Run.at(a.run), EvalConfig())
    tokens = tokens[: a.max_tokens or None]
    stride = a.stride or max(1, block // 2)
    windows = sliding_windows(len(tokens), block, stride)
    token_bytes = tok.token_bytes()
    cfg = lm.config.model
    print(
        f"{a.run}: {lm.model.num_params():,} parameters, {cfg.n_layer} x {cfg.n_embd}, MLP {cfg.ffn_hidden}, "
        f"context {block}; {source} split, {len(tokens):,} tokens in {len(windows)} windows, stride {stride}"
    )
    ref = score_tokens(lm.model, tokens, stride, 8, token_bytes, tok.bos_id)["bits_per_byte"]
    ckpt_mb = sum(p.numel() * 4 for p in lm.model.parameters()) / 1e6

    def row(name: str, size: str, bpb: float, note: str = "") -> None:
        print(f"{name:<28} {size:>12} {bpb:>10.5f} {bpb / ref:>8.5f}  {note}".rstrip(), flush=True)

    print(f"{'format':<28} {'size':>12} {'bits/byte':>10} {'vs f32':>8}")
    row("scratchlm eval (torch f32)", f"{ckpt_mb:.2f} MB", ref, "(weights as f32; no file)")

    with tempfile.TemporaryDirectory() as tmp:
        hf = write_export(a.run, "hf", Path(tmp) / "hf-bf16", dtype="bf16")
        size = f"{(hf / 'model.safetensors').stat().st_size / 1e6:.2f} MB"
        for name, dtype in (("hf bf16, run in bf16", torch.bfloat16), ("hf bf16, run in f32", torch.float32)):
            row(name, size, score_windows(hf_logits(hf, dtype), tokens, windows, token_bytes, tok.bos_id))
        for dtype in GGUF_DTYPES:
            out = write_export(a.run, "gguf", Path(tmp) / f"{dtype}.gguf", dtype=dtype)
            llm, logits_of = llama_cpp_logits(out, block, a.threads)
            try:
                bpb = score_windows(logits_of, tokens, windows, token_bytes, tok.bos_id)
            finally:
                llm.close()
            note = tensor_types(out) if dtype == "q4_k_m" else ""
            row(f"gguf {dtype}, llama.cpp", f"{out.stat().st_size / 1e6:.2f} MB", bpb, note)


if __name__ == "__main__":
    main()
