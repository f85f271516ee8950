"""The run directory: every file one run makes, and the resolved config that drives it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from .common import UserError, atomic_write_text
from .config import RunConfig, SettingError

# What training (and eval/sample on its model) leaves in a run: set aside together, never deleted, when the
# run starts over.
RESULTS = (
    "checkpoints",
    "metrics.csv",
    "loss.png",
    "eval.json",
    "report.md",
    "samples.txt",
    "tensorboard",
    "sft_data.json",
)


@dataclass(frozen=True)
class Run:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> Run:
        return cls(Path(path))

    config_path = property(lambda self: self.root / "config.yaml")
    tokenizer_dir = property(lambda self: self.root / "tokenizer")
    data_dir = property(lambda self: self.root / "data")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")
    metrics_path = property(lambda self: self.root / "metrics.csv")
    loss_plot_path = property(lambda self: self.root / "loss.png")
    samples_path = property(lambda self: self.root / "samples.txt")
    eval_path = property(lambda self: self.root / "eval.json")
    report_path = property(lambda self: self.root / "report.md")
    manifest_path = property(lambda self: self.root / "data" / "manifest.json")
    best_path = property(lambda self: self.root / "checkpoints" / "best.safetensors")

    def step_dir(self, step: int) -> Path:
        """The checkpoint folder of `step` (checkpoint.py writes it atomically)."""
        return self.checkpoints_dir / f"step_{step:06d}"

    previous_dir = property(lambda self: self.root / "previous")
    lock_path = property(lambda self: self.root / ".lock")

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def is_run(self) -> bool:
        """A scratchlm run: its config.yaml beside what prepare or train made (a config.yaml alone may be a
        recipe in a project folder)."""
        made = self.checkpoints_dir.is_dir() or self.tokenizer_dir.is_dir() or self.has_data()
        return self.has_config() and made

    def load_config(self) -> RunConfig:
        if not self.has_config():
            raise UserError(
                f"{self.root}: not a scratchlm run (no config.yaml); run `scratchlm prepare {self.root}`"
            )
        try:
            with open(self.config_path, encoding="utf-8") as f:
                saved = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{self.config_path}: not valid YAML ({' '.join(str(e).split())})") from None
        try:
            return RunConfig.from_dict(saved, str(self.config_path))
        except SettingError as e:
            raise UserError(f"{self.config_path}: {e}") from None

    def config_or_default(self) -> RunConfig:
        """The run's saved settings, or the defaults for a run not made yet."""
        return self.load_config() if self.has_config() else RunConfig()

    @property
    def base(self) -> str:
        """The run an SFT run was tuned from ('' for a pretraining run)."""
        return self.load_config().sft.base if self.has_config() else ""

    def has_data(self) -> bool:
        return self.manifest_path.is_file()

    def no_model_message(self) -> str:
        """What to do about a run without a checkpoint, by what the run is (or whether it is one)."""
        if not self.root.is_dir():
            return f"{self.root}: no such run directory; give a trained run (or `scratchlm demo` makes one)"
        if self.base:  # reads config.yaml: only where the message is needed
            return f"{self.root}: no checkpoint yet; run `scratchlm sft {self.root}` first"
        if self.has_data():
            return f"{self.root}: no checkpoint yet; run `scratchlm train {self.root}` first"
        return f"{self.root}: no data, no checkpoint; run `scratchlm prepare {self.root}`"

    def refuse_sft_run(self, command: str) -> None:
        """`prepare`, `train` and `plan` are for pretraining runs; an SFT run has no data of its own."""
        base = self.base  # config.yaml, read once
        if base:
            raise UserError(
                f"{self.root}: an SFT run (tuned from {base}), which `{command}` does not apply to; "
                f"`scratchlm sft {self.root}` continues it; a new pretraining run starts with "
                "`scratchlm prepare NEW_RUN`"
            )

    def save_config(self, cfg: RunConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def require_data(self) -> None:
        if self.has_data():
            return
        if self.has_checkpoints():  # an imported model, or a run whose data/ was removed
            raise UserError(
                f"{self.root}: a model without prepared data (imported, or data/ removed); give it text to "
                f"train on: `scratchlm prepare {self.root} --input FILE` (default: the bundled book)"
            )
        raise UserError(f"{self.root}: no prepared data; run `scratchlm prepare {self.root}` first")

    def has_checkpoints(self) -> bool:
        ckpt = self.checkpoints_dir
        return ckpt.is_dir() and any(
            p.name.startswith("step_") or p.suffix == ".safetensors" for p in ckpt.iterdir()
        )

    def set_aside(self, tokenizer: bool = False) -> Path | None:
        """Move the run's results (and its tokenizer, when tokenizer=True because a new one replaces it) into
        RUN/previous/<time>/ and return that folder; None when there was nothing to move.

        The folder also gets copies of config.yaml and the tokenizer, so the old model still loads from
        there: `scratchlm sample RUN/previous/<time> "..."`.
        """
        present = [self.root / name for name in RESULTS if (self.root / name).exists()]
        if tokenizer and self.tokenizer_dir.exists():
            present.append(self.tokenizer_dir)
        if not present:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest, n = self.previous_dir / stamp, 1
        while dest.exists():  # two set-asides in one second
            n += 1
            dest = self.previous_dir / f"{stamp}-{n}"
        dest.mkdir(parents=True)
        if self.has_config():
            shutil.copy2(self.config_path, dest / self.config_path.name)
        if not tokenizer and self.tokenizer_dir.is_dir():
            shutil.copytree(self.tokenizer_dir, dest / self.tokenizer_dir.name)
        # Checkpoints first (RESULTS order): moves cut short never leave the old model to resume on.
        for path in present:
            os.replace(path, dest / path.name)
        return dest

    @contextmanager
    def removed_if_it_fails_untrained(self) -> Iterator[None]:
        """A command that starts a run and fails before its first step (no config.yaml yet) takes back what
        it made (the copied tokenizer, the lock, the text it saved), so the next attempt starts as new; the
        error says so. Nothing that was there before is touched."""
        existed = self.root.is_dir()
        before = set(os.listdir(self.root)) if existed else set()
        try:
            yield
        except (UserError, KeyboardInterrupt) as e:
            untrained = self.root.is_dir() and not self.has_config()
            made = set(os.listdir(self.root)) - before if untrained else set()
            for name in made:
                path = self.root / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if made and not existed and not any(self.root.iterdir()):
                self.root.rmdir()
            if made and isinstance(e, UserError):
                raise UserError(f"{e} ({self.root} is left as it was before this command)") from None
            raise

    @contextmanager
    def writer_lock(self, command: str) -> Iterator[None]:
        """One writer per run: hold RUN/.lock for the block, or fail at once naming the process that holds it.

        flock, not a pid file: the kernel drops the lock when its process dies, however it dies (SIGKILL,
        OOM killer), so a crashed run never blocks the next one and there is no stale file to judge.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no flock; run without the lock rather than not at all
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.root} is in use by {_holder(self.lock_path)}; wait for it to finish "
                    "or stop it, then run this again (one command writes to a run at a time)"
                ) from None
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": f"scratchlm {command}",
                "argv": shlex.join(sys.argv),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock; the file stays (unlinking it would let two holders race)


def _holder(lock_path: Path) -> str:
    try:
        h = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"`{h['command']}` (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError):  # the holder is between taking the lock and writing its name
        return "another scratchlm process"
