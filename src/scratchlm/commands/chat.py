"""`scratchlm chat RUN`: talk to the run's model in the terminal, replies streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..settings import resolve


def chat(
    run: str | Path,
    *,
    checkpoint: str = "best",
    system: str | None = None,
    origin: str = "scratchlm.chat()",
    **settings: Any,
) -> None:
    """Chat with the run's model in the terminal, replies streamed; a base model (not made by `scratchlm
    sft`) continues each line as text instead. Piped input: one user turn per line.

    Args:
        run: a trained run directory
        checkpoint: best, last, or a path to a .safetensors file
        system: system prompt (default: the one the run was tuned with)
    """
    from ..chat import chat as talk

    cfg = resolve(run, "chat", overrides={"sample": settings}, origin=origin).sample
    talk(run, cfg, checkpoint=checkpoint, system=system)
