"""Every command over every kind of run (issue 24, item 15): each works on it, or ends in one line that says
what the run is and what to do; none writes outside the paths its command line names; and a command that
prints a next step prints one that works."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from scratchlm.cli import main

# Training flags that keep every built run to a few seconds.
QUICK = ["--train.max-steps", "3", "--train.batch-size", "2", "--train.eval-interval", "3"]
QUICK += ["--train.eval-batches", "1"]
SFT_QUICK = [*QUICK, "--sft.check-prompts", "1"]


def _ok(argv: list[str]) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def _damage_newest_checkpoint(run: Path) -> None:
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def build_runs(home: Path, template: Path, corpus: Path, presets: tuple[str, ...]) -> dict[str, Path]:
    """One run of each kind a user ends up with, made with the commands a user types."""
    runs = home / "runs"
    made: dict[str, Path] = {}
    made["base"] = shutil.copytree(template, runs / "base")
    for preset in presets:
        run = runs / preset
        _ok(["prepare", run, "--input", corpus, "--tokenizer.vocab-size", "600"])
        if preset == "auto":
            _ok(["train", run, "--preset", "auto", "--train.max-minutes", "0.05"])
        else:
            _ok(["train", run, "--preset", preset, *QUICK])
        made[preset] = run
    made["char"] = runs / "char"
    _ok(["prepare", made["char"], "--input", corpus, "--tokenizer.kind", "char"])
    _ok(["train", made["char"], "--preset", "tiny", *QUICK])
    made["sft"] = runs / "sft"
    _ok(["sft", made["sft"], "--from", made["base"], *SFT_QUICK])
    _ok(["export", made["base"], "--format", "hf", "--out", home / "base-hf"])
    made["imported"] = runs / "imported"
    _ok(["import", home / "base-hf", made["imported"]])
    made["untrained"] = runs / "untrained"
    _ok(["prepare", made["untrained"], "--input", corpus, "--tokenizer.vocab-size", "600"])
    made["damaged"] = shutil.copytree(template, runs / "damaged")
    _damage_newest_checkpoint(made["damaged"])
    return made


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models on a shared 2-core machine run faster on one thread (conftest.one_thread, module-wide)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run_template, tiny_corpus) -> dict[str, Path]:
    with one_torch_thread():
        yield build_runs(tmp_path_factory.mktemp("home"), trained_run_template, tiny_corpus, ("tiny", "auto"))


# Each command as a user types it: {run} is the run, {out} and {new} paths that do not exist yet.
COMMANDS = {
    "prepare": ["prepare", "{run}"],
    "train": ["train", "{run}", "--train.max-steps", "2"],
    "sft-from": ["sft", "{new}", "--from", "{run}", *SFT_QUICK[:2], "--train.eval-batches", "1"],
    "sft": ["sft", "{run}"],
    "eval": ["eval", "{run}", "--batch-size", "64"],
    "sample": ["sample", "{run}", "The", "--max-new-tokens", "8", "--temperature", "0"],
    "chat": ["chat", "{run}", "--max-new-tokens", "8", "--temperature", "0"],
    "serve": ["serve", "{run}", "--port", "0"],
    "export-hf": ["export", "{run}", "--format", "hf", "--out", "{out}"],
    "export-gguf": ["export", "{run}", "--format", "gguf", "--out", "{out}.gguf"],
    "export-web": ["export", "{run}", "--format", "web", "--out", "{out}"],
    "plan": ["plan", "{run}", "--minutes", "1"],
    "tokenizer": ["tokenizer", "encode", "{run}", "Hello there"],
}


def snapshot(*roots: Path) -> dict[Path, str]:
    """Every file under the roots with a digest of its bytes."""
    files = (p for root in roots for p in root.rglob("*") if p.is_file())
    return {p: hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest() for p in files}


def changed(before: dict[Path, str], after: dict[Path, str]) -> set[Path]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def run_command(argv: list[str], monkeypatch, capsys, stdin: str = "") -> tuple[int, str, str]:
    """`scratchlm ARGV` in this process: the exit code, stdout and stderr. serve binds its port and returns
    instead of serving; chat reads `stdin`."""
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: [s.close() for s in sockets or []])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def fill(template: list[str], run: Path, scratch: Path) -> list[str]:
    names = {"run": run, "out": scratch / "exported", "new": scratch / "new-run"}
    return [a.format(**names) for a in template]


def named_paths(argv: list[str]) -> list[Path]:
    """The paths a command line names: what it may write."""
    return [Path(a) for a in argv if a.startswith("/")]


def within(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


KINDS = ["base", "tiny", "auto", "char", "sft", "imported", "untrained", "damaged"]
PRETRAINED = ("base", "tiny", "auto", "char", "imported", "damaged")
# Where a command does not apply: (kind, command) -> words its one error line must hold, naming what the
# run is. Every pair not listed must succeed.
EXPECT: dict[tuple[str, str], str] = {
    **{(k, "prepare"): "already has checkpoints trained on its data" for k in PRETRAINED if k != "imported"},
    **{(k, "sft"): "a pretraining run, not an SFT run" for k in (*PRETRAINED, "untrained")},
    **{("sft", c): "an SFT run (tuned from" for c in ("prepare", "train", "plan")},
    ("imported", "train"): "a model without prepared data (imported",
    ("imported", "plan"): "a model without prepared data (imported",
    ("imported", "eval"): "a model without prepared data (imported",
    **{
        ("untrained", c): "no checkpoint yet"
        for c in ("sft-from", "eval", "sample", "chat", "serve", "export-hf", "export-gguf", "export-web")
    },
}
HINT = re.compile(r"`(scratchlm [^`]+)`")
# Bookkeeping, not a result: the writer lock's file stays by design (run.writer_lock).
BOOKKEEPING = {".lock"}


def follow(hint: str, run: Path, scratch: Path, base: Path, corpus: Path) -> list[str]:
    """A printed command as the user would run it: placeholders filled, training capped to seconds, and a
    new run prepared from the tests' slice of the bundled book rather than all of it."""
    names = {"NEW_RUN": scratch / "from-hint", "BASE_RUN": base, "FILE": corpus, "RUN": run}
    argv = [str(names.get(a, a)) for a in shlex.split(hint)[1:]]
    if argv[0] == "prepare":  # the tests' slice, not the whole bundled book, and a vocabulary it can fill
        argv += [] if "--input" in argv else ["--input", str(corpus)]
        argv += ["--tokenizer.vocab-size", "600"]
    if argv[0] == "train":
        argv += ["--train.max-minutes", "0.05"]
    if argv[0] == "sft":
        argv += ["--train.max-steps", "2", "--sft.check-prompts", "1"]
    return argv


def check_command(kind: str, command: str, runs: dict, corpus: Path, tmp_path: Path, monkeypatch, capsys):
    """Run COMMANDS[command] on a copy of the run of this kind: it works, writing only inside the paths it
    names, or refuses in one line with EXPECT's words, writing nothing; every printed next step works."""
    run = shutil.copytree(runs[kind], tmp_path / kind)
    monkeypatch.chdir(tmp_path)  # anything written relative to the current folder is seen too
    argv = fill(COMMANDS[command], run, tmp_path)
    home = runs[kind].parents[1]
    before = snapshot(tmp_path, home)
    rc, out, err = run_command(argv, monkeypatch, capsys, stdin="Hello\n")
    writes = {p for p in changed(before, snapshot(tmp_path, home)) if p.name not in BOOKKEEPING}
    expected = EXPECT.get((kind, command))
    if expected is None:
        assert rc == 0, err
        allowed = named_paths(argv)
        if command == "export-gguf":  # the Ollama Modelfile beside the GGUF, documented with it
            allowed.append(tmp_path / "exported.Modelfile")
        assert all(within(p, allowed) for p in writes), sorted(writes)
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert expected in err, err
        assert not writes, sorted(writes)  # a refusal leaves everything as it was
    for hint in HINT.findall(out + err):
        step = follow(hint, run, tmp_path, runs["base"], corpus)
        assert run_command(step, monkeypatch, capsys)[0] == 0, f"the printed next step failed: {hint}"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_on_every_kind_of_run(kind, command, runs, tiny_corpus, tmp_path, monkeypatch, capsys):
    check_command(kind, command, runs, tiny_corpus, tmp_path, monkeypatch, capsys)


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory, trained_run_template, tiny_corpus) -> dict[str, Path]:
    with one_torch_thread():
        home = tmp_path_factory.mktemp("home")
        runs = {"base": shutil.copytree(trained_run_template, home / "runs" / "base")}
        for preset in ("small", "gpt2"):
            run = home / "runs" / preset
            _ok(["prepare", run, "--input", tiny_corpus, "--tokenizer.vocab-size", "600"])
            _ok(["train", run, "--preset", preset, *QUICK, "--train.batch-size", "1"])
            runs[preset] = run
        yield runs


# The 12M and 124M presets: what changes with size is the context, the files' size and the plan's shapes;
# at 124M, plan and sft-from read nothing of the run that the 12M preset does not already try.
LARGER = ["sample", "chat", "serve", "export-hf", "export-gguf", "plan", "sft-from"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, command",
    [("small", c) for c in LARGER] + [("gpt2", c) for c in LARGER if c not in ("plan", "sft-from")],
)
def test_commands_on_the_larger_presets(
    kind, command, preset_runs, tiny_corpus, tmp_path, monkeypatch, capsys
):
    check_command(kind, command, preset_runs, tiny_corpus, tmp_path, monkeypatch, capsys)


def test_the_demos_next_steps_work(runs, tiny_corpus, tmp_path, monkeypatch, capsys):
    from scratchlm.commands.demo import _print_next_steps
    from scratchlm.run import Run

    run = shutil.copytree(runs["base"], tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    _print_next_steps(Run.at(run))
    lines = capsys.readouterr().out.split("Next:\n")[1].splitlines()
    steps = [line.split("#")[0].strip() for line in lines if line.strip().startswith("scratchlm ")]
    assert len(steps) >= 5 and any("--format hf" in s for s in steps)
    for step in steps:
        step = step.replace("runs/mine", str(tmp_path / "mine")).replace("your_text.txt", str(tiny_corpus))
        assert (
            run_command(follow(step, run, tmp_path, runs["base"], tiny_corpus), monkeypatch, capsys)[0] == 0
        ), step


def test_the_clock_stop_names_a_command_that_trains_on(runs, tiny_corpus, tmp_path, monkeypatch, capsys):
    run = shutil.copytree(runs["untrained"], tmp_path / "run")
    argv = [
        "train",
        str(run),
        "--preset",
        "tiny",
        "--train.max-steps",
        "100000",
        "--train.max-minutes",
        "0.02",
    ]
    rc, out, err = run_command(argv, monkeypatch, capsys)
    assert rc == 0 and "is spent" in out + err
    stopped = int(re.search(r"stopped at step (\d+)", out + err).group(1))
    (hint,) = HINT.findall(out + err)
    assert run_command(shlex.split(hint)[1:], monkeypatch, capsys)[0] == 0
    from scratchlm.checkpoint import step_dirs
    from scratchlm.run import Run

    assert int(step_dirs(Run.at(run))[-1].name.split("_")[1]) > stopped  # the named command trained on
