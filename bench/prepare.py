"""Benchmark `scratchlm prepare` against a naive `tokenizer.encode(whole_text)` into a numpy array,
and its worker processes (--data.workers) against a nanoGPT-style multiprocess tiktoken script.

    PYTHONPATH=src python bench/prepare.py --sizes-mb 50 500 --baseline-mb 50
    PYTHONPATH=src:/tmp/tikpkg python bench/prepare.py --sizes-mb --workers-mb 40 --workers 1 2

(`pip install --target /tmp/tikpkg tiktoken` for the peer; without tiktoken it is left out.)

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
elif mode.startswith("workers="):
    from scratchlm.config import RunConfig
    from scratchlm.commands.prepare import prepare
    cfg = RunConfig()
    cfg.data.inputs = [corpus]
    cfg.data.workers = int(mode.split("=")[1])
    prepare(run, cfg)
elif mode.startswith("peer="):  # nanoGPT's prepare: a Pool over documents, encode_ordinary + <|endoftext|>
    import multiprocessing as mp
    import numpy as np
    sys.path.insert(0, os.path.dirname(corpus))
    from peer_encoding import encoding, process
    with mp.get_context("spawn").Pool(int(mode.split("=")[1])) as pool, open(corpus, "rb") as f:
        ids = list(pool.imap(process, f, chunksize=64))
    arr = np.memmap(os.path.join(run, "peer.bin"), dtype=np.uint16, mode="w+", shape=(sum(map(len, ids)),))
    pos = 0
    for x in ids:
        arr[pos : pos + len(x)] = x
        pos += len(x)
    arr.flush()
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


PEER = r"""
# The peer's encoder: tiktoken's BPE over the bench's byte-level vocabulary (tiktoken's own gpt2 file
# would need the network); one document per JSONL line, as nanoGPT's openwebtext/prepare.py maps them.
import json
import tiktoken
from tokenizers import Tokenizer

def _ranks():
    data = json.loads(Tokenizer.from_file(__import__("os").environ["PEER_TOKENIZER"]).to_str())
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    rest = [n for n in range(256) if n not in bs]
    inv = {chr(c): b for b, c in zip(bs + rest, bs + [256 + k for k in range(len(rest))])}
    vocab = [(t, i) for t, i in data["model"]["vocab"].items() if not t.startswith("<|")]
    return {bytes(inv[ch] for ch in t): i for t, i in vocab if set(t) <= inv.keys()}

PAT = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
RANKS = _ranks()
EOT = max(RANKS.values()) + 1
encoding = tiktoken.Encoding("bench", pat_str=PAT, mergeable_ranks=RANKS, special_tokens={"<|eot|>": EOT})

def process(line):
    ids = encoding.encode_ordinary(json.loads(line)["text"])
    ids.append(EOT)
    return ids
"""


def workers_section(args, book: bytes, work: Path, tok: Path) -> None:
    """--data.workers N on N cores against 1 on 1 core, beside the peer's Pool(N) against Pool(1)."""
    corpus = work / "corpus.jsonl"
    text = book.decode("utf-8")
    paras = [p for p in text.split("\n\n") if p.strip()]
    with open(corpus, "w", encoding="utf-8") as f:  # web-like documents of ~3 KB, none a duplicate
        i = 0
        while f.tell() < args.workers_mb * 1e6:
            doc = "\n\n".join(paras[(i * 7 + k) % len(paras)] for k in range(12))
            f.write(json.dumps({"text": f"Document {i}.\n\n{doc}"}) + "\n")
            i += 1
    mb = corpus.stat().st_size / 1e6
    all_cores = sorted(os.sched_getaffinity(0))
    try:
        import tiktoken  # noqa: F401

        (work / "peer_encoding.py").write_text(PEER)
        os.environ["PEER_TOKENIZER"] = str(tok / "tokenizer.json")
        peers = True
    except ImportError:
        print("tiktoken is not installed: the peer is left out")
        peers = False
    print(f"{mb:.0f} MB JSONL, {i:,} documents; load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'what':>22} {'cores':>5} {'MB/s':>7} {'peak RSS':>9}  scaling (speed-up / cores)")
    for label, modes in (("scratchlm prepare", "workers="), ("nanoGPT-style tiktoken", "peer=")):
        if modes == "peer=" and not peers:
            continue
        base = None
        for n in args.workers:
            r = measure(f"{modes}{n}", all_cores[:n], corpus, work / "run", tok)
            rate = mb / r["secs"]
            base = base or rate
            speedup = rate / base
            line = f"{label:>22} {n:>5} {rate:>7.2f} {r['rss_mb']:>7.0f}MB"
            print(f"{line}  {speedup:.2f}x / {n} = {speedup / n:.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--book", default=str(shared / "war_and_peace.txt"))
    ap.add_argument("--sizes-mb", type=int, nargs="*", default=[50, 500])
    ap.add_argument("--baseline-mb", type=int, nargs="*", default=[50], help="sizes to run the naive one on")
    ap.add_argument("--workers-mb", type=int, default=0, help="JSONL size for the --data.workers section")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))])
    ap.add_argument("--kind", default="unigram", help="tokenizer kind (the peer needs bytelevel)")
    args = ap.parse_args()

    from scratchlm.config import TokenizerConfig
    from scratchlm.data.corpus import clean
    from scratchlm.tokenizer import train_tokenizer

    book = Path(args.book).read_bytes()
    all_cores = sorted(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="scratchlm-bench-"))
    try:
        tok = work / "tok"
        kind = "bytelevel" if args.workers_mb else args.kind
        train_tokenizer([clean(book.decode("utf-8"))], TokenizerConfig(kind=kind, vocab_size=4096)).save(tok)
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
        if args.workers_mb:
            workers_section(args, book, work, tok)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
