"""Samples of a run: continuations streamed to a terminal (or any stream) and appended to RUN/samples.txt
(what `scratchlm sample` and the demo print).

The decoding itself (prompt fitting, filters, the decode step, text streaming) is decode.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .checkpoint import load
from .common import UserError, atomic_write_text
from .config import SampleConfig
from .data.corpus import read_text
from .data.sources import get_field, jsonl_objects
from .decode import stream_text
from .run import Run


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a text file, or per record of a .jsonl file ({"prompt": "..."})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts_file {path}: no such file")
    if path.suffix == ".jsonl":
        fix = 'give each line a "prompt" string'
        prompts = [get_field(obj, "prompt", where, fix) for where, obj in jsonl_objects(path)]
    else:
        prompts = [line for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts_file {path}: no prompts in it; write one prompt per line")
    return prompts


def append_samples(run: Run, entries: list[str]) -> None:
    """Add entries to RUN/samples.txt; the file is rewritten atomically, never left half-written."""
    old = run.samples_path.read_text(encoding="utf-8") if run.samples_path.is_file() else ""
    atomic_write_text(run.samples_path, old + "".join(entries))


def write_samples(
    run_dir: str | Path,
    prompt: str | list[str],
    cfg: SampleConfig | None = None,
    checkpoint: str = "best",
    out=None,
) -> str | list[str]:
    """Stream continuations of one prompt (or each of a list) to `out`; append them to RUN/samples.txt.

    Every prompt starts from the same seed, so its output does not depend on its place in a list.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    out = out or sys.stdout
    run = Run.at(run_dir)
    lm = load(run.root, checkpoint)
    cfg = cfg or lm.config.sample
    texts, entries = [], []
    for i, p in enumerate(prompts):
        if len(prompts) > 1:
            out.write(f"--- {i + 1}/{len(prompts)}\n")
        out.write(p)
        out.flush()
        pieces = []
        for piece in stream_text(lm, p, cfg):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        texts.append("".join(pieces))
        entries.append(
            f"--- step {lm.step}, seed {cfg.seed}, temperature {cfg.temperature}, top_k {cfg.top_k}, "
            f"top_p {cfg.top_p}, min_p {cfg.min_p}, repetition_penalty {cfg.repetition_penalty}\n"
            f"{p}{texts[-1]}\n"
        )
    append_samples(run, entries)
    return texts[0] if isinstance(prompt, str) else texts
