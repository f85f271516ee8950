"""Shared fixtures: a tiny corpus cut from the bundled book, and a tiny trained run built once."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from scratchlm.config import RunConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(corpus: Path) -> RunConfig:
    """~100k parameters: trains in seconds on a laptop CPU."""
    cfg = RunConfig()
    cfg.data.inputs = [str(corpus)]
    cfg.tokenizer.vocab_size = 600
    cfg.model.block_size = 64
    cfg.model.n_layer = 2
    cfg.model.n_head = 2
    cfg.model.n_embd = 64
    cfg.train.batch_size = 8
    cfg.train.max_steps = 60
    cfg.train.warmup_steps = 10
    cfg.train.eval_interval = 30
    cfg.train.eval_batches = 4
    cfg.train.log_interval = 5
    cfg.train.lr = 1e-2
    return cfg


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The first ~150 kB of War and Peace (after the Gutenberg header)."""
    text = clean(read_text(bundled_corpus()))[:150_000]
    path = tmp_path_factory.mktemp("corpus") / "wp_slice.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run_template(tmp_path_factory, tiny_corpus) -> Path:
    from scratchlm.commands.prepare import prepare
    from scratchlm.commands.train import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_config(tiny_corpus)
    prepare(run, cfg)
    train(run, cfg)
    return run


@pytest.fixture(scope="session")
def preset_auto_run(tmp_path_factory, tiny_corpus) -> Path:
    """A run trained as the README and the demo train: `--preset auto` (what the plan picks on this machine
    for the tiny corpus, a few seconds of it), so the tests export the model users actually get."""
    from scratchlm.cli import main
    from scratchlm.commands.prepare import prepare

    run = tmp_path_factory.mktemp("runs") / "auto"
    prepare(run, tiny_config(tiny_corpus))
    assert main(["train", str(run), "--preset", "auto", "--train.max-minutes", "0.1"]) == 0
    return run


@pytest.fixture
def trained_run(trained_run_template, tmp_path) -> Path:
    """A private copy of the tiny trained run, free to modify."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run_template, dst)
    return dst


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: two threads contend and run 10-40x slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ctrl_c_reaches_it() -> None:
    """Popen's preexec_fn for a child the test stops with SIGINT: a shell without job control starts its
    background commands (a CI script launched with `&`) with SIGINT ignored, the child inherits that, and
    Python then installs no KeyboardInterrupt handler, so Ctrl-C would never reach the command under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not present (../shared/data is optional)")
    return path


# .ci/run sets this: there, a test whose tool is missing (llama-cpp-python, Chromium, npm packages) fails
# instead of skipping, so CI cannot be green without the GGUF, browser and web-page checks having run.
REQUIRE_ALL = os.environ.get("SCRATCHLM_REQUIRE_ALL_TOOLS") == "1"


def missing_tool(why: str):
    """Skip the test (a developer's machine may lack the tool), or fail it where CI requires every tool."""
    if REQUIRE_ALL:
        pytest.fail(f"{why} (SCRATCHLM_REQUIRE_ALL_TOOLS=1: CI must run this test)")
    pytest.skip(why)


def need_chromium() -> tuple[str, str]:
    """Paths of Chromium and its driver for the selenium tests."""
    chromium = "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(chromium).is_file() and Path(driver).is_file()):
        missing_tool("needs /usr/bin/chromium and chromedriver: apt-get install chromium chromium-driver")
    return chromium, driver
