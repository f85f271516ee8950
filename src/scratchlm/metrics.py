"""metrics.csv (one row per logged step, appended) and loss.png drawn from it."""

from __future__ import annotations

import csv
from pathlib import Path

from .common import atomic_path

# end_rate: SFT runs, the share of greedy replies to val prompts that end with <|end|> within the limit.
FIELDS = ["step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s", "end_rate"]


class MetricsLog:
    """Open only once the run has taken its first step: a start that fails leaves metrics.csv as it was.

    resume_step None starts a new file (the trainer has set any old one aside first).
    """

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = read_metrics(path) if resume_step is not None else []
        # A killed run may have logged steps past its last checkpoint: those rows are replayed, so drop them.
        rows = [r for r in rows if resume_step is not None and int(r["step"]) <= resume_step]
        # Rewritten beside and renamed over: a crash here leaves the old file whole, never a truncated one.
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, **row) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, FIELDS).writerow({k: _fmt(row.get(k)) for k in FIELDS})


def _fmt(v):
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_loss(metrics_path: Path, out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "val", "o-")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if pts:
            ax.plot(*zip(*pts, strict=False), style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
