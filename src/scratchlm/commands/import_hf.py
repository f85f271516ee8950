"""`scratchlm import HF_DIR RUN`: a Hugging Face GPT-2 or Llama folder becomes a scratchlm run."""

from __future__ import annotations

from pathlib import Path


def import_hf(hf_dir: str | Path, run: str | Path) -> Path:
    """Turn a Hugging Face GPT-2 or Llama folder into a scratchlm run.

    Args:
        hf_dir: a folder with config.json, model.safetensors and tokenizer files
        run: the new run directory
    """
    from ..formats import import_run

    made = import_run(hf_dir, run)
    print(f"imported {hf_dir} into {made}")
    return made
