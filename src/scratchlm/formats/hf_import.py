"""Read a Hugging Face GPT-2 / Llama / Qwen3 folder into a new scratchlm run: safetensors weights (never
pickles), config.json through adapters.py's config map, and the tokenizer when it is a kind scratchlm has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..common import UserError
from ..config import ModelConfig, RunConfig, SettingError, TokenizerConfig
from .adapters import from_hf_state_dict, model_config_from_hf
from .hf_folder import TOKENIZER_FILES

Tensor = torch.Tensor


def read_hf_weights(hf_dir: Path) -> dict[str, Tensor]:
    """model.safetensors, or the shards listed by model.safetensors.index.json (never pickles)."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"{index}: not a safetensors index (a JSON object with a weight_map): {e}"
            ) from None
        for name in names:
            # Shard names come from the file: "../x" or "/x" would read a file outside the folder.
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise UserError(
                    f"{index}: shard {name!r} is not a file inside {hf_dir}; the index is not valid"
                )
        weights = {}
        for name in sorted(names):
            weights.update(_load_safetensors(hf_dir / name))
        return weights
    raise UserError(
        f"{hf_dir}: no model.safetensors; scratchlm reads only safetensors weights "
        "(re-save the model with save_pretrained(..., safe_serialization=True))"
    )


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: missing; the model folder is incomplete")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise UserError(
            f"{path}: not a readable .safetensors file ({e}); download or export it again"
        ) from None


def read_hf_config(hf_dir: Path) -> ModelConfig:
    """The ModelConfig of the folder's config.json; UserError when it is missing, malformed or unsupported."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir}: no config.json; give a Hugging Face model folder")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a JSON object of model settings")
    try:
        cfg = model_config_from_hf(d)
    except KeyError as e:
        raise UserError(f"{path}: no {e.args[0]!r}, which a {d.get('model_type')} model needs") from None
    except SettingError as e:  # the model settings' own range check: say which file held the value
        raise UserError(f"{path}: a setting has an unusable value ({e})") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"{path}: a setting has an unusable value ({e})") from None
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"):
        value, least = getattr(cfg, name), 0 if name == "n_kv_head" else 1  # n_kv_head 0: one per head
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(
                f"{path}: a setting has an unusable value ({name} = {value!r}, not an integer >= {least})"
            )
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


def import_hf(hf_dir: str | Path, run_dir: str | Path) -> None:
    """Turn a GPT-2, Llama or Qwen3 Hugging Face folder into a scratchlm run in the (new, empty) run_dir.

    The run gets config.yaml, tokenizer/ and a weights-only step-0 checkpoint (+ best.safetensors), so
    eval, sample and train (which then starts at step 0 from these weights) accept it.
    """
    from ..checkpoint import save_best, save_checkpoint, weights_of
    from ..model import GPT
    from ..run import Run

    hf_dir, run = Path(hf_dir), Run.at(run_dir)
    cfg = RunConfig()
    cfg.model = read_hf_config(hf_dir)
    tokenizer = _import_tokenizer(hf_dir, run.tokenizer_dir)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(
            f"{hf_dir}: config.json vocab_size {cfg.model.vocab_size} != tokenizer's {tokenizer.vocab_size}"
        )
    cfg.tokenizer = TokenizerConfig(
        kind=tokenizer.kind, vocab_size=tokenizer.vocab_size, normalization=tokenizer.meta["normalization"]
    )
    gen_path = hf_dir / "generation_config.json"
    if gen_path.is_file():
        gen = json.loads(gen_path.read_text(encoding="utf-8"))
        if gen.get("do_sample") is False:
            cfg.sample.temperature = 0.0
        elif "temperature" in gen:
            cfg.sample.temperature = float(gen["temperature"])
        cfg.sample.top_k = int(gen.get("top_k", cfg.sample.top_k))
        cfg.sample.max_new_tokens = int(gen.get("max_new_tokens", cfg.sample.max_new_tokens))

    hf_sd = read_hf_weights(hf_dir)
    if cfg.model.tie_embeddings:
        hf_sd.pop("lm_head.weight", None)
    try:
        model = GPT(cfg.model)
        model.load_state_dict({k: v.float() for k, v in from_hf_state_dict(hf_sd, cfg.model).items()})
    except (RuntimeError, ValueError, ZeroDivisionError) as e:  # shapes that config.json does not describe
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else repr(e))
        raise UserError(f"{hf_dir}: the weights do not fit config.json ({detail})") from None

    # Weights only: no optimizer or loader state, so `train` starts fresh at step 0 from these weights.
    weights = weights_of(model.state_dict(), cfg.model.tie_embeddings)
    state = {"step": 0, "best_val": float("inf"), "elapsed_s": 0.0}
    save_checkpoint(run, 0, weights, cfg, tokenizer.hash, state, keep_last=1)
    save_best(run, 0, weights, cfg, tokenizer.hash, val_loss=float("inf"))
    run.save_config(cfg)


def tokenizer_json_kind(tj: dict) -> str | None:
    """scratchlm's kind of a tokenizer.json without SentencePiece model: "bytelevel" (BPE over GPT-2
    byte characters), "char" (BPE without merges, byte fallback), or None."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        return None
    if "ByteLevel" in json.dumps(tj.get("pre_tokenizer")):
        return "bytelevel"
    if model.get("byte_fallback") and not model.get("merges") and tj.get("pre_tokenizer") is None:
        return "char"
    return None


def _import_tokenizer(hf_dir: Path, tok_dir: Path):
    """Copy the folder's tokenizer files into RUN/tokenizer, add scratchlm's metadata file, and load it."""
    from ..tokenizer import META_FILE, SPECIALS, Tokenizer

    if (hf_dir / "tokenizer.model").is_file():
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString((hf_dir / "tokenizer.model").read_bytes())
        kinds = {pb.TrainerSpec.UNIGRAM: "unigram", pb.TrainerSpec.BPE: "bpe"}
        kind = kinds.get(proto.trainer_spec.model_type)
        nfkc = proto.normalizer_spec.name != "identity"
    elif (hf_dir / "tokenizer.json").is_file():
        try:
            tj = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise UserError(f"{hf_dir / 'tokenizer.json'}: not valid JSON ({e})") from None
        kind, nfkc = tokenizer_json_kind(tj), "NFKC" in json.dumps(tj.get("normalizer"))
    else:
        raise UserError(f"{hf_dir}: no tokenizer.model or tokenizer.json; the folder needs its tokenizer")
    if kind is None:
        raise UserError(
            f"{hf_dir}: tokenizer type not supported; scratchlm imports SentencePiece (tokenizer.model), "
            "byte-level BPE or character tokenizers"
        )
    tok_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, tok_dir / name)
    # The normalization goes in the metadata too: a SentencePiece tokenizer builds its tokenizer.json from it.
    meta = {"kind": kind, "normalization": "nfkc" if nfkc else "identity"}
    (tok_dir / META_FILE).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    try:
        tokenizer = Tokenizer.load(tok_dir)
    except UserError as e:  # e.g. no <|bos|> ... <|end|> at ids 0..6, as in a hub GPT-2 or Llama
        detail = str(e).split(": ", 1)[-1].split(";")[0]
        raise UserError(
            f"{hf_dir}: cannot use its {kind} tokenizer ({detail}); scratchlm needs its special tokens "
            f"{', '.join(SPECIALS)} at ids 0..{len(SPECIALS) - 1}, as in its own exports"
        ) from None
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{hf_dir}: cannot use its {kind} tokenizer here ({e})") from None
    tokenizer.save(tok_dir)  # rewrites the metadata (hash, special ids) the way scratchlm keeps it
    return tokenizer
