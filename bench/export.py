"""Export benchmark: export time and file size per format, and greedy generation speed of the same
weights in scratchlm, transformers, llama.cpp (llama-cpp-python, when installed) and onnxruntime on the
transformers.js export (when installed), in one run.

    PYTHONPATH=src python bench/export.py [--preset small] [--flavour llama] [--tokens 128] [--threads 1]

Random weights (the speed does not depend on them); a tokenizer trained on a slice of the bundled book.
The engines take turns within each repeat (the median is shown), so a change in the machine's load hits
them alike; the f32 engines must produce the same tokens, which checks the exported files too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import scratchlm
from scratchlm.checkpoint import save_best, save_checkpoint, weights_of
from scratchlm.commands.prepare import prepare
from scratchlm.config import PRESETS, RunConfig, SampleConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.decode import generate_ids, prompt_ids_for
from scratchlm.formats import write_export as export
from scratchlm.model import GPT
from scratchlm.run import Run
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
    weights = weights_of(model.state_dict(), cfg.model.tie_embeddings)
    save_checkpoint(Run.at(run), 1, weights, cfg, tok.hash, {"step": 1}, keep_last=1)
    save_best(Run.at(run), 1, weights, cfg, tok.hash, val_loss=0.0)
    return run


def ort_generator(folder: Path, ids: list[int], n: int, threads: int):
    """Greedy decoding in onnxruntime with the KV cache, fed as transformers.js feeds it."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), opts)
    names = [o.name for o in session.get_outputs()]
    empty = {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values.")
    }

    def generate() -> list[int]:
        out, past, new = [], empty, np.array([ids], dtype=np.int64)
        while len(out) < n:
            total = len(ids) + len(out)
            feeds = {
                "input_ids": new,
                "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(total - new.shape[1], total, dtype=np.int64)[None],
                **past,
            }
            res = dict(zip(names, session.run(None, feeds), strict=True))
            out.append(int(res["logits"][0, -1].argmax()))
            past = {k.replace("present.", "past_key_values."): v for k, v in res.items() if k != "logits"}
            new = np.array([[out[-1]]], dtype=np.int64)
        return out

    return generate


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--flavour", default="llama")
    ap.add_argument("--tokens", type=int, default=128)
    # 1 thread by default: on this shared 2-core machine two threads make small models 10-40x slower
    # from contention (measured for bench/generate.py, issue 7).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, a.preset, a.flavour)
        lm = scratchlm.load(run)
        n_params = sum(p.numel() for p in lm.model.parameters())
        print(f"{a.preset} {a.flavour}: {n_params / 1e6:.1f}M parameters, {a.threads} threads")
        outs = {}
        formats = [("hf", "f32"), ("gguf", "f32"), ("gguf", "f16"), ("gguf", "q8_0"), ("onnx", "f32")]
        for fmt, dtype in formats:
            out = root / f"m-{dtype}.gguf" if fmt == "gguf" else root / f"{fmt}-{dtype}"
            s = timed(lambda fmt=fmt, out=out, dtype=dtype: export(run, fmt, out, dtype=dtype))
            size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
            print(f"export {fmt:4s} {dtype:5s}: {s:6.2f} s, {size / 2**20:7.2f} MiB")
            outs[(fmt, dtype)] = out

        ids = prompt_ids_for(lm.tokenizer, "Prince Andrew said that", lm.config.model.block_size)
        n = min(a.tokens, lm.config.model.block_size - len(ids))
        cfg = SampleConfig(temperature=0, max_new_tokens=n)
        engines = {"scratchlm (torch f32)": lambda: list(generate_ids(lm.model, ids, cfg))}

        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(outs[("hf", "f32")])
        x = torch.tensor([ids])

        def hf_generate() -> list[int]:
            with torch.no_grad():
                out = hf.generate(x, do_sample=False, max_new_tokens=n, min_new_tokens=n)
            return out[0, len(ids) :].tolist()

        engines["transformers (f32)"] = hf_generate
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
                    n_threads_batch=a.threads,
                    verbose=False,
                )

                def gen(llm=llm) -> list[int]:
                    out = []
                    for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
                        out.append(t)
                        if len(out) == n:
                            return out
                    return out

                engines[f"llama.cpp ({dtype})"] = gen
        try:
            engines["onnxruntime (f32 ONNX)"] = ort_generator(outs[("onnx", "f32")], ids, n, a.threads)
        except ImportError:
            print("onnxruntime is not installed: its row is skipped")
        times: dict[str, list[float]] = {name: [] for name in engines}
        outputs = {name: fn() for name, fn in engines.items()}  # one untimed warm-up run each
        for _ in range(a.repeats):
            for name, fn in engines.items():
                times[name].append(timed(fn))
        reference = outputs["scratchlm (torch f32)"]
        base = n / statistics.median(times["scratchlm (torch f32)"])
        print(f"greedy, {len(ids)}-token prompt, {n} new tokens, median of {a.repeats}:")
        for name, ts in times.items():
            tps = n / statistics.median(ts)
            same = "same tokens" if outputs[name] == reference else "different tokens"
            print(f"{name:24s} {tps:8.1f} tokens/s  ({tps / base:.2f}x scratchlm)  {same}")
        f32 = [
            outputs[k]
            for k in ("transformers (f32)", "llama.cpp (f32)", "onnxruntime (f32 ONNX)")
            if k in outputs
        ]
        if any(out != reference for out in f32):
            raise SystemExit("an f32 engine produced other tokens than scratchlm: the export is wrong")


if __name__ == "__main__":
    main()
