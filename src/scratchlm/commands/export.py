"""`scratchlm export RUN --format hf|gguf --out PATH`: the run's model for transformers or llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def export(
    run: str | Path,
    *,
    format: Literal["hf", "gguf"],
    out: str | Path,
    checkpoint: str = "best",
    dtype: str = "f32",
    force: bool = False,
) -> Path:
    """Write the run's model as a Hugging Face folder or a GGUF file.

    Args:
        run: a trained run directory
        format: hf (GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM folder) or gguf
        out: output folder (hf) or .gguf file
        checkpoint: best, last, or a path to a .safetensors file
        dtype: hf: f32, f16 or bf16; gguf: f32, f16, q8_0 or q4_k_m (needs llama-cpp-python); float32,
            float16, bfloat16 name f32, f16, bf16
        force: replace --out if an earlier export wrote it
    """
    from ..formats import write_export

    path = write_export(run, format, out, checkpoint, dtype, force)
    print(f"wrote {path}")
    return path
