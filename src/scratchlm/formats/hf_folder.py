"""Write a loaded run as a Hugging Face folder: transformers weights (adapters.py's key map), the run's
tokenizer files with a tokenizer_config.json that names the special tokens and the chat template, a
generation_config.json with the run's sampling settings, and the model card (its text: card.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..chat_template import jinja_template, stop_ids
from .adapters import start_id, to_hf_model

# Files of RUN/tokenizer/ that transformers reads; tokenizer.model keeps SentencePiece runs readable by
# llama.cpp's converter, which prefers it to tokenizer.json for Llama-family vocabularies.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def _tokenizer_config(tok_dir: Path, tokenizer) -> dict:
    """The run's tokenizer_config.json with the special tokens and the chat template set; its BOS is
    start_id's token, like config.json's, so tokenizer.bos_token_id is what scratchlm starts prompts with."""
    path = tok_dir / "tokenizer_config.json"
    d = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    d.update(
        {
            "bos_token": tokenizer.piece(start_id(tokenizer)),
            "eos_token": tokenizer.piece(tokenizer.eos_id),
            "pad_token": tokenizer.piece(tokenizer.pad_id),
            "chat_template": jinja_template(),
        }
    )
    d.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    d.setdefault("model_max_length", None)
    return d


def write_hf_folder(lm, tok_dir: Path, out: Path, dtype: str, card: str) -> None:
    """Write the model, tokenizer, generation config and model card of a LoadedModel into `out`."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # one "wrote DIR" line is enough for a model this small
    tok = lm.tokenizer
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    hf = to_hf_model(lm.model, start_id(tok), tok.eos_id, tok.pad_id, dtype=torch_dtype)
    hf.save_pretrained(out)
    write_generation_config(lm, out)
    write_tokenizer_files(tok, tok_dir, out)
    (out / "README.md").write_text(card, encoding="utf-8")


def write_generation_config(lm, out: Path) -> None:
    """generation_config.json: the run's start and stop ids and its sampling settings."""
    from transformers import GenerationConfig

    tok, sc = lm.tokenizer, lm.config.sample
    gen = GenerationConfig(
        bos_token_id=start_id(tok),
        eos_token_id=stop_ids(tok),  # generate() ends a chat reply at <|end|>, a document at <|eos|>
        pad_token_id=tok.pad_id,
        do_sample=sc.temperature > 0,
        **({"temperature": sc.temperature, "top_k": sc.top_k} if sc.temperature > 0 else {}),
        # The whole sequence within the context: GPT2LMHeadModel has no position past n_positions, so
        # generate(**inputs) with sample.max_new_tokens (200) on a 128-token model raised IndexError.
        max_length=lm.config.model.block_size,
    )
    gen.save_pretrained(out)


def write_tokenizer_files(tok, tok_dir: Path, out: Path) -> None:
    """The run's tokenizer files, with tokenizer_config.json naming the special tokens and chat template."""
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file() and name != "tokenizer_config.json":
            shutil.copyfile(tok_dir / name, out / name)
    cfg_text = json.dumps(_tokenizer_config(tok_dir, tok), indent=2, ensure_ascii=False) + "\n"
    (out / "tokenizer_config.json").write_text(cfg_text, encoding="utf-8")
