"""Export benchmark: export time and file size per format, and greedy generation speed of the same
weights in scratchlm, transformers and llama.cpp (llama-cpp-python, when installed), in one run.

    PYTHONPATH=src python bench/export.py [--preset small] [--flavour llama] [--tokens 128] [--threads 2]

Random weights (the speed does not depend on them); a tokenizer trained on a slice of the bundled book.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import scratchlm
from scratchlm.checkpoint import save_best, save_checkpoint
from scratchlm.config import PRESETS, RunConfig, SampleConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.export import export
from scratchlm.model import GPT
from scratchlm.prepare import prepare
from scratchlm.run import Run
from scratchlm.sample import generate_ids
from scratchlm.tokenizer import Tokenizer


def make_run(root: Path, preset: str, flavour: str) -> Path:
    corpus = root / "corpus.txt"
    corpus.write_text(clean(read_text(bundled_corpus()))[:300_000], encoding="utf-8")
    cfg = RunConfig()
    cfg.data.inputs = [str(corpus)]
    cfg.tokenizer.kind = "bpe"
    for key, value in PRESETS[preset]["model"].items():
        setattr(cfg.model, key, value)
    cfg.model.flavour = flavour
    if flavour == "llama":
        cfg.model.bias = False
    run = root / "run"
    prepare(run, cfg)
    cfg = Run.at(run).load_config()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    tok = Tokenizer.load(run / "tokenizer")
    save_checkpoint(Run.at(run), 1, model, cfg, tok.hash, {"step": 1}, keep_last=1)
    save_best(Run.at(run), 1, model, cfg, tok.hash, val_loss=0.0)
    return run


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--flavour", default="llama")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, a.preset, a.flavour)
        lm = scratchlm.load(run)
        n_params = sum(p.numel() for p in lm.model.parameters())
        print(f"{a.preset} {a.flavour}: {n_params / 1e6:.1f}M parameters, {a.threads} threads")
        outs = {}
        for fmt, dtype in (("hf", "f32"), ("gguf", "f32"), ("gguf", "f16"), ("gguf", "q8_0")):
            out = root / f"{fmt}-{dtype}" if fmt == "hf" else root / f"m-{dtype}.gguf"
            s = timed(lambda fmt=fmt, out=out, dtype=dtype: export(run, fmt, out, dtype=dtype))
            size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
            print(f"export {fmt:4s} {dtype:5s}: {s:6.2f} s, {size / 2**20:7.2f} MiB")
            outs[(fmt, dtype)] = out

        ids = [lm.tokenizer.bos_id] + lm.tokenizer.encode("Prince Andrew said that")
        n = min(a.tokens, lm.config.model.block_size - len(ids))
        cfg = SampleConfig(temperature=0, max_new_tokens=n)
        results = {}
        list(generate_ids(lm.model, ids, cfg))  # every engine gets one untimed warm-up run
        s = timed(lambda: list(generate_ids(lm.model, ids, cfg)))
        results["scratchlm (torch f32)"] = n / s

        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(outs[("hf", "f32")])
        x = torch.tensor([ids])
        with torch.no_grad():
            hf.generate(x, do_sample=False, max_new_tokens=n, min_new_tokens=n)
            s = timed(lambda: hf.generate(x, do_sample=False, max_new_tokens=n, min_new_tokens=n))
        results["transformers (f32)"] = n / s
        try:
            from llama_cpp import Llama
        except ImportError:
            print("llama-cpp-python is not installed: llama.cpp rows skipped")
        else:
            for dtype in ("f32", "q8_0"):
                llm = Llama(
                    model_path=str(outs[("gguf", dtype)]),
                    n_ctx=lm.config.model.block_size,
                    n_threads=a.threads,
                    verbose=False,
                )

                def gen(llm=llm):
                    for i, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
                        if i + 1 == n:
                            break

                gen()
                results[f"llama.cpp ({dtype})"] = n / timed(gen)
                llm.close()
        base = results["scratchlm (torch f32)"]
        for name, tps in results.items():
            print(f"{name:24s} {tps:8.1f} tokens/s  ({tps / base:.2f}x scratchlm)")


if __name__ == "__main__":
    main()
