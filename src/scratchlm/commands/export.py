"""`scratchlm export RUN --format hf|gguf|onnx|web --out PATH`: the run's model for transformers, llama.cpp,
transformers.js or a browser page."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def export(
    run: str | Path,
    *,
    format: Literal["hf", "gguf", "onnx", "web"],
    out: str | Path,
    checkpoint: str = "best",
    dtype: str = "f32",
    force: bool = False,
    vendor: str | Path | None = None,
) -> Path:
    """Write the run's model as a Hugging Face folder, a GGUF file, a transformers.js (ONNX) folder, or a
    static web page that runs it.

    Args:
        run: a trained run directory
        format: hf (GPT2LMHeadModel / LlamaForCausalLM / Qwen3ForCausalLM folder), gguf, onnx (a
            transformers.js folder: onnx/model.onnx with a KV cache, beside config.json and the tokenizer),
            or web (a static page folder)
        out: output folder (hf, onnx, web) or .gguf file
        checkpoint: best, last, or a path to a .safetensors file
        dtype: hf: f32, f16 or bf16; gguf: f32, f16, q8_0 or q4_k_m (needs llama-cpp-python); onnx: f32;
            web: f32, f16 or q8_0; float32, float16, bfloat16 name f32, f16, bf16
        force: replace --out if an earlier export wrote it
        vendor: web only: a node_modules folder with @wllama/wllama, copied in so the page works offline
            (default: the page loads its runtime from the jsDelivr CDN, pinned version)
    """
    from ..formats import write_export

    path = write_export(run, format, out, checkpoint, dtype, force, vendor)
    print(f"wrote {path}")
    return path
