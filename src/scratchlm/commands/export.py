"""`scratchlm export RUN --format hf|gguf|onnx --out PATH`: the run's model for transformers, llama.cpp or
transformers.js."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def export(
    run: str | Path,
    *,
    format: Literal["hf", "gguf", "onnx"],
    out: str | Path,
    checkpoint: str = "best",
    dtype: str = "f32",
    force: bool = False,
) -> Path:
    """Write the run's model as a Hugging Face folder, a GGUF file or a transformers.js (ONNX) folder.

    Args:
        run: a trained run directory
        format: hf (GPT2LMHeadModel / LlamaForCausalLM folder), gguf, or onnx (a transformers.js folder:
            onnx/model.onnx with a KV cache, beside config.json and the tokenizer)
        out: output folder (hf, onnx) or .gguf file
        checkpoint: best, last, or a path to a .safetensors file
        dtype: hf: f32, f16 or bf16; gguf: f32, f16 or q8_0; onnx: f32
        force: replace --out if an earlier export wrote it
    """
    from ..formats import write_export

    path = write_export(run, format, out, checkpoint, dtype, force)
    print(f"wrote {path}")
    return path
