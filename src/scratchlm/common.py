"""Small shared pieces: the user-error type, device choice, seeding, atomic writes, printing.

torch and numpy are imported inside functions so that `scratchlm --help` stays instant.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: the CLI prints the message on one line and exits with 2."""


def pick_device(name: str = "auto", option: str = "--train.device"):
    import torch

    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"{option} {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"{option} {name}: no CUDA device is visible; use {option} cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"{option} {name}: MPS (Apple GPU) is not available here; use {option} cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# Dense bf16 peak of common GPUs, for MFU (model FLOPs utilization) in the progress bar and the bench.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


def peak_bf16_flops(gpu_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu_name), None)


def peak_flops(device) -> float | None:
    import torch

    return peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them bf16 is ~10x slower."""
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: absent means unknown
    return probe() if probe else True


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank0_print(*args, **kwargs) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def is_interactive() -> bool:
    """A progress bar only for a person at a terminal or in a Jupyter notebook; plain lines under CI and in
    logs. The bars are tqdm.auto's: a widget in Jupyter (with ipywidgets installed), text elsewhere."""
    return (sys.stderr.isatty() or in_notebook()) and not os.environ.get("CI")


def in_notebook() -> bool:
    """Running in a Jupyter (or Colab) kernel, whose stderr is no terminal but shows a progress bar."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None  # a terminal IPython has no kernel


_UMASK = os.umask(0)
os.umask(_UMASK)


def usual_permissions(path: str | os.PathLike) -> None:
    """0666 less the umask, what open() gives: writers that make 0600 files (mkstemp, safetensors'
    save_file) would keep other users of a shared machine from a run they may read."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    A crash mid-write leaves the previous file intact: readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file being written (a read-only run), not the temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        usual_permissions(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 when run directly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> tuple[Dist, object]:
    """Join the torchrun process group if there is one; return (Dist, torch.device).

    NCCL on CUDA (one GPU per local rank), gloo on CPU.
    """
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(), pick_device(device_name)
    info = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
        )
    return info, device


def plural(n: int, noun: str) -> str:
    """'1 step', '3 steps': what every count in a message says."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
