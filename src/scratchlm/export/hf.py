"""The key map between scratchlm's GPT and transformers' GPT2LMHeadModel / LlamaForCausalLM.

scratchlm keeps GPT-2's and Llama's math and names on purpose, so export is renaming plus three
layout changes, all exact:
- GPT-2 in transformers uses Conv1D, whose weight is (in, out): our nn.Linear (out, in) is transposed.
- Llama splits our fused c_attn rows [q; k; v] into q_proj, k_proj, v_proj (our RoPE already uses
  transformers' rotate-half layout, so no permutation is needed).
- The embedding/head rows past vocab_size are padding for matmul speed: they are sliced off on export
  and zero-filled on import.
Options transformers' classes cannot express are refused with the option's name, never exported wrong.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..chat_template import jinja_template, stop_ids
from ..common import UserError
from ..config import ModelConfig, RunConfig, SettingError, TokenizerConfig

Tensor = torch.Tensor


# model.activation → GPT2Config.activation_function: transformers' "gelu" is the exact erf GELU and
# "gelu_new" GPT-2's tanh approximation (its "gelu_pytorch_tanh" is the same function in one kernel).
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def check_exportable(cfg: ModelConfig) -> None:
    """Raise UserError naming the first option that GPT2LMHeadModel / LlamaForCausalLM cannot express."""
    if cfg.flavour == "gpt2":
        if cfg.kv_heads != cfg.n_head:
            raise UserError(
                f"model.n_kv_head={cfg.n_kv_head}: GPT2LMHeadModel has no grouped-query attention; "
                "export needs n_kv_head 0 (= n_head) for the gpt2 flavour"
            )
        if cfg.qk_norm:
            raise UserError("model.qk_norm=true: GPT2LMHeadModel has no QK-norm; it cannot be exported")
    elif cfg.flavour == "llama":
        if cfg.qk_norm:
            raise UserError("model.qk_norm=true: LlamaForCausalLM has no QK-norm; it cannot be exported")
    else:
        raise UserError(f"model.flavour={cfg.flavour!r}: only gpt2 and llama can be exported")


def hf_config_dict(cfg: ModelConfig, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict:
    """The keyword arguments of transformers' GPT2Config / LlamaConfig for this model."""
    check_exportable(cfg)
    ids = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if cfg.flavour == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.ffn_hidden,
            "activation_function": HF_ACTIVATION[cfg.activation],
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "tie_word_embeddings": cfg.tie_embeddings,
            **ids,
        }
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        **ids,
    }


def hf_config(cfg: ModelConfig, bos_id=None, eos_id=None, pad_id=None):
    """A transformers GPT2Config or LlamaConfig object (imports transformers)."""
    from transformers import GPT2Config, LlamaConfig

    d = hf_config_dict(cfg, bos_id, eos_id, pad_id)
    d.pop("model_type")
    return (GPT2Config if cfg.flavour == "gpt2" else LlamaConfig)(**d)


def model_config_from_hf(d: dict, vocab_multiple: int = 64) -> ModelConfig:
    """The scratchlm ModelConfig of a transformers config.json dict; UserError when unsupported."""
    model_type = d.get("model_type")
    if model_type == "gpt2":
        act = d.get("activation_function", "gelu_new")  # GPT2Config's default
        if act not in _ACTIVATION_FROM_HF:
            raise UserError(
                f"config.json activation_function={act!r}: scratchlm's gpt2 flavour supports "
                f"{', '.join(_ACTIVATION_FROM_HF)} (--model.activation gelu / gelu_tanh)"
            )
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if d.get(flag):
                raise UserError(f"{flag}=true is not supported by scratchlm's gpt2 flavour")
        if d.get("scale_attn_weights") is False:
            raise UserError("scale_attn_weights=false is not supported by scratchlm's gpt2 flavour")
        n_embd = d.get("n_embd", 768)
        return ModelConfig(
            flavour="gpt2",
            vocab_size=d["vocab_size"],
            block_size=d.get("n_positions", 1024),
            n_layer=d.get("n_layer", 12),
            n_head=d.get("n_head", 12),
            n_embd=n_embd,
            mlp_hidden=d.get("n_inner") or 4 * n_embd,
            activation=_ACTIVATION_FROM_HF[act],
            dropout=float(d.get("resid_pdrop", 0.0)),
            bias=True,
            tie_embeddings=d.get("tie_word_embeddings", True),
            norm_eps=d.get("layer_norm_epsilon", 1e-5),
            vocab_multiple=vocab_multiple,
        )
    if model_type == "llama":
        hidden, heads = d["hidden_size"], d["num_attention_heads"]
        if d.get("head_dim") not in (None, hidden // heads):
            raise UserError(f"head_dim={d['head_dim']}: scratchlm needs head_dim = hidden_size / heads")
        if d.get("hidden_act", "silu") != "silu":
            raise UserError(f"hidden_act={d['hidden_act']!r}: scratchlm's llama uses silu")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise UserError(
                f"rope_type={rope.get('rope_type', rope.get('type'))!r}: only default RoPE is supported"
            )
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        if bool(d.get("attention_bias", False)) != bool(d.get("mlp_bias", False)):
            raise UserError("attention_bias != mlp_bias: scratchlm's model.bias sets both")
        return ModelConfig(
            flavour="llama",
            vocab_size=d["vocab_size"],
            block_size=d.get("max_position_embeddings", 2048),
            n_layer=d["num_hidden_layers"],
            n_head=heads,
            n_kv_head=d.get("num_key_value_heads") or heads,
            n_embd=hidden,
            mlp_hidden=d["intermediate_size"],
            dropout=float(d.get("attention_dropout", 0.0)),
            bias=bool(d.get("attention_bias", False)),
            tie_embeddings=d.get("tie_word_embeddings", False),
            rope_theta=float(theta),
            norm_eps=d.get("rms_norm_eps", 1e-6),
            vocab_multiple=vocab_multiple,
        )
    archs = ", ".join(d.get("architectures") or []) or "none listed"
    raise UserError(
        f"config.json model_type={model_type!r} (architectures: {archs}): only gpt2 and llama can be imported"
    )


# ---------------------------------------------------------------- scratchlm → transformers
def to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """scratchlm GPT state dict → transformers state dict (lm_head included even when tied)."""
    check_exportable(cfg)
    V = cfg.vocab_size
    out: dict[str, Tensor] = {}
    if cfg.flavour == "gpt2":
        out["transformer.wte.weight"] = sd["transformer.wte.weight"][:V]
        out["transformer.wpe.weight"] = sd["transformer.wpe.weight"]
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            for norm in ("ln_1", "ln_2"):
                w = sd[p + norm + ".weight"]
                out[p + norm + ".weight"] = w
                # A LayerNorm or Linear without bias is one with a zero bias: GPT-2 always has them.
                out[p + norm + ".bias"] = sd.get(p + norm + ".bias", torch.zeros_like(w))
            for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                w = sd[p + lin + ".weight"]  # (out, in)
                out[p + lin + ".weight"] = w.t().contiguous()  # Conv1D: (in, out)
                out[p + lin + ".bias"] = sd.get(p + lin + ".bias", w.new_zeros(w.shape[0]))
        out["transformer.ln_f.weight"] = sd["transformer.ln_f.weight"]
        out["transformer.ln_f.bias"] = sd.get(
            "transformer.ln_f.bias", torch.zeros_like(sd["transformer.ln_f.weight"])
        )
        out["lm_head.weight"] = sd["lm_head.weight"][:V]
        return out

    hd = cfg.n_embd // cfg.n_head
    sizes = [cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd]
    out["model.embed_tokens.weight"] = sd["transformer.wte.weight"][:V]
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = sd[p + "ln_1.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "ln_2.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            qkv = sd[p + "attn.c_attn." + suffix].split(sizes, dim=0)
            for name, t in zip(("q_proj", "k_proj", "v_proj"), qkv, strict=True):
                out[q + f"self_attn.{name}.{suffix}"] = t.contiguous()
            out[q + f"self_attn.o_proj.{suffix}"] = sd[p + "attn.c_proj." + suffix]
            up, gate = sd[p + "mlp.c_fc." + suffix].chunk(2, dim=0)  # one Linear, rows [up; gate]
            out[q + f"mlp.gate_proj.{suffix}"] = gate.contiguous()
            out[q + f"mlp.up_proj.{suffix}"] = up.contiguous()
            out[q + f"mlp.down_proj.{suffix}"] = sd[p + "mlp.c_proj." + suffix]
    out["model.norm.weight"] = sd["transformer.ln_f.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"][:V]
    return out


def to_hf_model(model, bos_id=None, eos_id=None, pad_id=None, dtype: torch.dtype = torch.float32):
    """An in-memory transformers GPT2LMHeadModel / LlamaForCausalLM with the weights of a scratchlm GPT."""
    from transformers import AutoModelForCausalLM

    cfg = model.config
    hf_cfg = hf_config(cfg, bos_id, eos_id, pad_id)
    hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    sd = to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    # A tied head is one tensor in transformers; everything else must match exactly.
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"key map mismatch: missing {missing}, unexpected {unexpected}")
    return hf.to(dtype).eval()


# ---------------------------------------------------------------- transformers → scratchlm
def _pad_rows(t: Tensor, rows: int) -> Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def from_hf_state_dict(hf: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """transformers state dict → scratchlm GPT state dict (padding rows zero; lm_head from wte if tied)."""
    P = cfg.padded_vocab_size
    out: dict[str, Tensor] = {}

    def take(key: str) -> Tensor:
        if key not in hf:
            raise UserError(f"model.safetensors: tensor {key} is missing")
        return hf[key]

    if cfg.flavour == "gpt2":
        out["transformer.wte.weight"] = _pad_rows(take("transformer.wte.weight"), P)
        out["transformer.wpe.weight"] = take("transformer.wpe.weight")
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            for norm in ("ln_1", "ln_2"):
                out[p + norm + ".weight"] = take(p + norm + ".weight")
                out[p + norm + ".bias"] = take(p + norm + ".bias")
            for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                out[p + lin + ".weight"] = take(p + lin + ".weight").t().contiguous()
                out[p + lin + ".bias"] = take(p + lin + ".bias")
        out["transformer.ln_f.weight"] = take("transformer.ln_f.weight")
        out["transformer.ln_f.bias"] = take("transformer.ln_f.bias")
        head = "transformer.wte.weight" if cfg.tie_embeddings else "lm_head.weight"
    else:
        out["transformer.wte.weight"] = _pad_rows(take("model.embed_tokens.weight"), P)
        for i in range(cfg.n_layer):
            p, q = f"transformer.h.{i}.", f"model.layers.{i}."
            out[p + "ln_1.weight"] = take(q + "input_layernorm.weight")
            out[p + "ln_2.weight"] = take(q + "post_attention_layernorm.weight")
            for suffix in ("weight", "bias") if cfg.bias else ("weight",):
                out[p + "attn.c_attn." + suffix] = torch.cat(
                    [take(q + f"self_attn.{n}.{suffix}") for n in ("q_proj", "k_proj", "v_proj")]
                )
                out[p + "attn.c_proj." + suffix] = take(q + f"self_attn.o_proj.{suffix}")
                out[p + "mlp.c_fc." + suffix] = torch.cat(
                    [take(q + f"mlp.up_proj.{suffix}"), take(q + f"mlp.gate_proj.{suffix}")]
                )
                out[p + "mlp.c_proj." + suffix] = take(q + f"mlp.down_proj.{suffix}")
        out["transformer.ln_f.weight"] = take("model.norm.weight")
        head = "model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"
    out["lm_head.weight"] = out["transformer.wte.weight"] if cfg.tie_embeddings else _pad_rows(take(head), P)
    return out


def from_hf_model(hf_model, vocab_multiple: int = 64):
    """A scratchlm GPT with the weights of an in-memory GPT2LMHeadModel / LlamaForCausalLM."""
    from ..model import GPT

    cfg = model_config_from_hf(hf_model.config.to_dict(), vocab_multiple)
    model = GPT(cfg)
    sd = {k: v.detach().cpu().float() for k, v in hf_model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    model.load_state_dict(from_hf_state_dict(sd, cfg))
    return model.eval()


# ---------------------------------------------------------------- the Hugging Face folder
# Files of RUN/tokenizer/ that transformers reads; tokenizer.model keeps SentencePiece runs readable by
# llama.cpp's converter, which prefers it to tokenizer.json for Llama-family vocabularies.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def start_id(tokenizer) -> int:
    """The token `scratchlm sample` puts before every prompt (<|bos|>, which starts every training
    document). Exports declare it as the BOS id, so transformers' generate() from nothing and llama.cpp's
    automatic BOS feed the model what scratchlm feeds it."""
    return tokenizer.bos_id


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
    from transformers import GenerationConfig
    from transformers.utils import logging

    logging.disable_progress_bar()  # one "wrote DIR" line is enough for a model this small
    tok = lm.tokenizer
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    hf = to_hf_model(lm.model, start_id(tok), tok.eos_id, tok.pad_id, dtype=torch_dtype)
    hf.save_pretrained(out)
    sc = lm.config.sample
    gen = GenerationConfig(
        bos_token_id=start_id(tok),
        eos_token_id=stop_ids(tok),  # generate() ends a chat reply at <|end|>, a document at <|eos|>
        pad_token_id=tok.pad_id,
        do_sample=sc.temperature > 0,
        **({"temperature": sc.temperature, "top_k": sc.top_k} if sc.temperature > 0 else {}),
        max_new_tokens=sc.max_new_tokens,
    )
    gen.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file() and name != "tokenizer_config.json":
            shutil.copyfile(tok_dir / name, out / name)
    cfg_text = json.dumps(_tokenizer_config(tok_dir, tok), indent=2, ensure_ascii=False) + "\n"
    (out / "tokenizer_config.json").write_text(cfg_text, encoding="utf-8")
    (out / "README.md").write_text(card, encoding="utf-8")


# ---------------------------------------------------------------- import
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
    """Turn a GPT-2 or Llama Hugging Face folder into a scratchlm run in the (new, empty) run_dir.

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
