"""Benchmark `scratchlm prepare` against a naive `tokenizer.encode(whole_text)` into a numpy array.

    PYTHONPATH=src python bench/prepare.py --sizes-mb 50 500 --baseline-mb 50

The corpus is War and Peace (with its Gutenberg header and footer) repeated into one file of each
size; every measurement runs in a fresh process pinned to 1 core or to all cores, with the same
pre-trained tokenizer, and reports MB/s of input and the process's peak RSS. Flat RSS across sizes
is the point of the streaming design; the ratios are what to compare (the machine is shared).
Everything is written under a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
cores, mode, corpus, run, tok = json.loads(sys.argv[1])
os.sched_setaffinity(0, cores)
t0 = time.perf_counter()
if mode == "prepare":
    from scratchlm.config import RunConfig
    from scratchlm.commands.prepare import prepare
    cfg = RunConfig()
    cfg.data.inputs = [corpus]
    prepare(run, cfg)
else:  # the naive baseline: the whole text in memory, one encode call, one array
    import numpy as np
    from scratchlm.tokenizer import Tokenizer
    t = Tokenizer.load(tok)
    text = open(corpus, encoding="utf-8").read()
    np.asarray(t.encode(text), dtype=np.uint16).tofile(os.path.join(run, "naive.bin"))
secs = time.perf_counter() - t0
print(json.dumps({"secs": secs, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(mode: str, cores: list[int], corpus: Path, run: Path, tok: Path) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    (run / "tokenizer").mkdir(parents=True)
    for f in tok.iterdir():
        shutil.copy(f, run / "tokenizer" / f.name)
    args = json.dumps([cores, mode, str(corpus), str(run), str(tok)])
    env = {**os.environ, "CI": "1"}  # plain progress lines, no bar
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(run, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--book", default=str(shared / "war_and_peace.txt"))
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--baseline-mb", type=int, nargs="*", default=[50], help="sizes to run the naive one on")
    args = ap.parse_args()

    from scratchlm.config import TokenizerConfig
    from scratchlm.data.corpus import clean
    from scratchlm.tokenizer import train_tokenizer

    book = Path(args.book).read_bytes()
    all_cores = sorted(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="scratchlm-bench-"))
    try:
        tok = work / "tok"
        train_tokenizer([clean(book.decode("utf-8"))], TokenizerConfig(vocab_size=4096)).save(tok)
        print(f"{'size':>6} {'mode':>9} {'cores':>5} {'MB/s':>7} {'peak RSS':>9}  ratio")
        for size in args.sizes_mb:
            corpus = work / f"corpus_{size}.txt"
            with open(corpus, "wb") as f:
                for _ in range(max(1, round(size * 1e6 / len(book)))):
                    f.write(book)
            mb = corpus.stat().st_size / 1e6
            rows = []
            if size in args.baseline_mb:
                rows.append(("naive", [all_cores[0]]))
            rows += [("prepare", [all_cores[0]]), ("prepare", all_cores)]
            base = None
            for mode, cores in rows:
                r = measure(mode, cores, corpus, work / "run", tok)
                rate = mb / r["secs"]
                base = base or rate
                line = f"{mb:>5.0f}M {mode:>9} {len(cores):>5} {rate:>7.2f} {r['rss_mb']:>7.0f}MB"
                print(f"{line}  {rate / base:.2f}x", flush=True)
            corpus.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
