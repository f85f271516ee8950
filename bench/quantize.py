"""GGUF size and quality per --dtype: bits per byte computed by llama.cpp (llama-cpp-python) on held-out text.

    PYTHONPATH=src python bench/quantize.py RUN [--chars 20000] [--threads 1]

Exports RUN (a trained run) as f32, f16, q8_0 and q4_k_m GGUF files into a temporary folder; for each,
llama.cpp scores the last --chars characters of the bundled book (the demo's validation text is its end) in
non-overlapping windows of the model's context, each window opened by <|bos|>, with logits for every position.
bits/byte = total negative log-likelihood / ln 2 / UTF-8 bytes of the scored tokens. The f32 row is the peer:
the ratio column is each file's bits/byte over f32's.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

import scratchlm
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.formats import write_export

DTYPES = ("f32", "f16", "q8_0", "q4_k_m")


def bits_per_byte(path: Path, windows: list[list[int]], token_bytes: np.ndarray, threads: int) -> float:
    from llama_cpp import Llama

    n_ctx = max(map(len, windows))
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False, logits_all=True)
    nll, nbytes = 0.0, 0
    try:
        for ids in windows:
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
            logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
            nbytes += int(token_bytes[ids[1:]].sum())
    finally:
        llm.close()
    return nll / math.log(2) / nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--chars", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    lm = scratchlm.load(a.run)
    tok, block = lm.tokenizer, lm.config.model.block_size
    ids = tok.encode(clean(read_text(bundled_corpus()))[-a.chars :])
    windows = [[tok.bos_id, *ids[i : i + block - 1]] for i in range(0, len(ids), block - 1)]
    token_bytes = tok.token_bytes()
    print(f"{a.run}: {lm.model.num_params():,} parameters, {len(ids):,} tokens scored, context {block}")
    print(f"{'dtype':<8} {'size':>10} {'bits/byte':>10} {'vs f32':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for dtype in DTYPES:
            out = write_export(a.run, "gguf", Path(tmp) / f"{dtype}.gguf", dtype=dtype)
            bpb = bits_per_byte(out, windows, token_bytes, a.threads)
            ref = ref or bpb
            print(f"{dtype:<8} {out.stat().st_size / 1e6:>8.2f}MB {bpb:>10.4f} {bpb / ref:>8.4f}")


if __name__ == "__main__":
    main()
