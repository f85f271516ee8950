"""`scratchlm.train_text(text, RUN)`: prepare and train a run from Python in one call (notebooks, scripts).

    import scratchlm
    text = open("input.txt", encoding="utf-8").read()
    lm = scratchlm.train_text(text, "runs/nb", model=dict(n_layer=4, n_embd=128), train=dict(max_steps=300))
    print(lm.generate("ROMEO:", temperature=0.8, top_k=40))

It runs the stages `scratchlm prepare` and `scratchlm train` run, with their files in RUN, then returns
`scratchlm.load(RUN)`. The progress bar is tqdm.auto's: a widget in Jupyter (with ipywidgets), text in a
terminal. It sits above the commands and calls them (prepare, then train, with one resolved config);
nothing imports it but the package's lazy attribute.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import UserError, atomic_write_text
from .config import RunConfig
from .lm import LoadedModel, load
from .run import Run
from .settings import resolve, section_values

TEXT_FILE = "input.txt"  # a text given as a string is kept here, in the run, as the corpus prepare reads
ORIGIN = "scratchlm.train_text()"
_PATH_SUFFIXES = (".txt", ".md", ".text", ".gz", ".jsonl", ".ndjson", ".parquet")


def train_text(
    text: str | os.PathLike | Sequence[str | os.PathLike],
    run_dir: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    preset: str | None = None,
    fresh: bool = False,
    data: Any = None,
    tokenizer: Any = None,
    model: Any = None,
    train: Any = None,
    sample: Any = None,
) -> LoadedModel:
    """Train a model on `text` in the run directory `run_dir` and return it loaded (best checkpoint).

    text: the training text itself (a str), or a file, folder or glob (a Path, or a one-line str naming
        an existing path), or a list of them: anything `scratchlm prepare --input` takes.
    config: a whole RunConfig to start from (default: the run's saved settings, or the defaults).
    preset: "tiny", "small" or "gpt2", applied before the sections below.
    data, tokenizer, model, train, sample: a section's settings, as its dataclass (e.g. a
        `scratchlm.GPTConfig`) or a dict of the fields to change, e.g. train=dict(max_steps=500, lr=1e-3).
    fresh: start over; the run's earlier checkpoints and metrics are set aside in RUN/previous/<time>/
        (the tokenizer is kept when its settings are unchanged, as `prepare --overwrite` does).

    Called again on a trained run with the same text and data settings, it continues the run (a larger
    train max_steps trains on; the same one has nothing left to do). Other text or data settings on a
    trained run are refused unless fresh=True, so a result is never overwritten by accident.
    """
    from .commands.prepare import prepare
    from .commands.train import train as pretrain

    run = Run.at(run_dir)
    new_text = _text_given(text)
    text_path = run.root / TEXT_FILE
    inputs = [str(text_path)] if new_text is not None else [str(p) for p in _paths(text)]
    data = {**(section_values("data", data) if data is not None else {}), "inputs": inputs}
    sections = dict(data=data, tokenizer=tokenizer, model=model, train=train, sample=sample)
    cfg = resolve(run, "train_text", config=config, preset=preset, overrides=sections, origin=ORIGIN)

    if run.has_checkpoints() and run.has_data() and not fresh:
        _check_same_data(run, cfg, new_text, text_path)
    else:
        with run.removed_if_it_fails_untrained():  # a failed prepare leaves no half-made run behind
            if new_text is not None:
                atomic_write_text(text_path, new_text)
            prepare(run.root, cfg, overwrite=fresh)
    pretrain(run.root, cfg, fresh=fresh)
    return load(run.root)


def _text_given(text) -> str | None:
    """The training text when `text` is the text itself; None when it names files."""
    if not isinstance(text, str):
        return None
    if not text.strip():  # not Path(""), which is the current directory
        raise UserError("train_text: the text is empty")
    if "\n" not in text and len(text) < 4096:
        if Path(text).expanduser().exists():
            return None
        if text.lower().endswith(_PATH_SUFFIXES):
            raise UserError(
                f"train_text: {text}: no such file (to train on this very string, pass it with a newline)"
            )
    if not text.strip():
        raise UserError("train_text: the text is empty")
    return text


def _paths(text) -> list[str | os.PathLike]:
    if isinstance(text, (str, os.PathLike)):
        return [text]
    if isinstance(text, Sequence) and text and all(isinstance(p, (str, os.PathLike)) for p in text):
        return list(text)
    raise UserError("train_text: give the text as a str, or files as a path or a list of paths")


def _check_same_data(run: Run, cfg: RunConfig, new_text: str | None, text_path: Path) -> None:
    """A trained run continues only on the data it was prepared from."""
    saved = run.load_config()
    if new_text is not None:  # the text itself is compared, wherever the run directory is named from
        same = text_path.is_file() and text_path.read_text(encoding="utf-8") == new_text
    else:
        same = [_resolved(p) for p in saved.data.inputs] == [_resolved(p) for p in cfg.data.inputs]
    settings = dataclasses.replace(cfg.data, inputs=saved.data.inputs)
    same = same and settings == saved.data and cfg.tokenizer == saved.tokenizer
    if not same:
        raise UserError(
            f"{run.root} was trained on other text or data settings; pass fresh=True to set its results "
            "aside in RUN/previous/ and start over, or give another run directory"
        )


def _resolved(path: str) -> str:
    return path if path.startswith("hf:") else str(Path(path).expanduser().resolve())
