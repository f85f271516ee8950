"""The run directory: every file one run makes, and the resolved config that drives it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .common import UserError, atomic_write_text
from .config import RunConfig, SettingError


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

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> RunConfig:
        if not self.has_config():
            raise UserError(
                f"{self.root}: not a scratchlm run (no config.yaml); run `scratchlm prepare {self.root}`"
            )
        with open(self.config_path, encoding="utf-8") as f:
            saved = yaml.safe_load(f) or {}
        try:
            return RunConfig.from_dict(saved)
        except SettingError as e:
            raise UserError(f"{self.config_path}: {e}") from None

    def save_config(self, cfg: RunConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def require_data(self) -> None:
        if not (self.data_dir / "manifest.json").is_file():
            raise UserError(f"{self.root}: no prepared data; run `scratchlm prepare {self.root}` first")
