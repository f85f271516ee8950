"""`scratchlm sample RUN PROMPT`: continue a prompt with the run's model, streamed to the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common import UserError
from ..settings import resolve


def sample(
    run: str | Path,
    prompt: str | list[str] | None = None,
    *,
    prompts_file: str | None = None,
    checkpoint: str = "best",
    origin: str = "scratchlm.sample()",
    **settings: Any,
) -> str | list[str]:
    """Continue PROMPT with the run's model, streaming it to the terminal; the run's sample settings are
    the defaults, the keyword settings (the flags) change them.

    Args:
        run: a trained run directory
        prompt: text to continue, also given by position: sample RUN PROMPT ('' starts from <|bos|>)
        prompts_file: one prompt per line (or .jsonl with "prompt")
        checkpoint: best, last, or a path to a .safetensors file
    """
    from ..sampling import read_prompts, write_samples

    cfg = resolve(run, "sample", overrides={"sample": settings}, origin=origin).sample
    if (prompt is None) == (prompts_file is None):
        raise UserError("give a PROMPT or --prompts_file FILE (one of them; quote a PROMPT with spaces)")
    prompts = prompt if prompts_file is None else read_prompts(prompts_file)
    return write_samples(run, prompts, cfg, checkpoint=checkpoint)
