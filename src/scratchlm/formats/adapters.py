"""The key map between scratchlm's GPT and transformers' GPT2LMHeadModel / LlamaForCausalLM /
Qwen3ForCausalLM (the llama flavour with QK-norm: Qwen3 is Llama plus a per-head RMSNorm on q and k
before RoPE, with the model's rms_norm_eps, exactly what model.py computes).

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

import torch

from ..common import UserError
from ..config import ModelConfig

Tensor = torch.Tensor


# model.activation → GPT2Config.activation_function: transformers' "gelu" is the exact erf GELU and
# "gelu_new" GPT-2's tanh approximation (its "gelu_pytorch_tanh" is the same function in one kernel).
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def hf_class(cfg: ModelConfig) -> str:
    """The transformers class that holds this model exactly."""
    if cfg.flavour == "gpt2":
        return "GPT2LMHeadModel"
    return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"


def export_blocker(cfg: ModelConfig) -> str | None:
    """Why no transformers class holds this model exactly (the first option that stops it), or None when
    it exports."""
    if cfg.flavour not in ("gpt2", "llama"):
        return f"model.flavour={cfg.flavour!r}: only gpt2 and llama can be exported"
    if cfg.flavour == "gpt2" and cfg.kv_heads != cfg.n_head:
        return (
            f"model.n_kv_head={cfg.n_kv_head}: GPT2LMHeadModel has no grouped-query attention; "
            "export needs n_kv_head 0 (= n_head) for the gpt2 flavour"
        )
    if cfg.flavour == "gpt2" and cfg.qk_norm:
        return "model.qk_norm=true: GPT2LMHeadModel has no QK-norm; use the llama flavour for a QK-norm model"
    # Llama has QK-norm nowhere and Qwen3 biases only on attention, while model.bias sets attention and MLP
    # biases together: no class computes the MLP biases of a QK-norm model.
    if cfg.qk_norm and cfg.bias:
        return (
            "model.bias=true with model.qk_norm=true: Qwen3ForCausalLM (Llama with QK-norm) has no MLP "
            "biases and LlamaForCausalLM no QK-norm; retrain with --model.bias false to export"
        )
    return None


def check_exportable(cfg: ModelConfig) -> None:
    """Raise UserError naming the first option that no transformers class can express."""
    blocker = export_blocker(cfg)
    if blocker:
        raise UserError(blocker)


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
    qwen3 = cfg.qk_norm
    return {
        "model_type": "qwen3" if qwen3 else "llama",
        "architectures": [hf_class(cfg)],
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
        **({"use_sliding_window": False} if qwen3 else {"mlp_bias": cfg.bias}),
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        **ids,
    }


def hf_config(cfg: ModelConfig, bos_id=None, eos_id=None, pad_id=None):
    """A transformers GPT2Config, LlamaConfig or Qwen3Config object (imports transformers)."""
    from transformers import AutoConfig

    d = hf_config_dict(cfg, bos_id, eos_id, pad_id)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def model_config_from_hf(d: dict, vocab_multiple: int = 64) -> ModelConfig:
    """The scratchlm ModelConfig of a transformers config.json dict; UserError when unsupported."""
    model_type = d.get("model_type")
    if model_type == "gpt2":
        return _gpt2_config_from_hf(d, vocab_multiple)
    if model_type in ("llama", "qwen3"):
        return _llama_config_from_hf(d, vocab_multiple)
    archs = ", ".join(d.get("architectures") or []) or "none listed"
    raise UserError(
        f"config.json model_type={model_type!r} (architectures: {archs}): only gpt2, llama and qwen3 can "
        "be imported"
    )


def _gpt2_config_from_hf(d: dict, vocab_multiple: int) -> ModelConfig:
    """GPT2Config → the gpt2 flavour; a key config.json leaves out takes GPT2Config's default (dropout: 0)."""
    act = d.get("activation_function", "gelu_new")
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


def _llama_config_from_hf(d: dict, vocab_multiple: int) -> ModelConfig:
    """LlamaConfig → the llama flavour; refuses what our attention and RoPE do not compute."""
    hidden, heads = d["hidden_size"], d["num_attention_heads"]
    if d.get("head_dim") not in (None, hidden // heads):
        raise UserError(f"head_dim={d['head_dim']}: scratchlm needs head_dim = hidden_size / heads")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"hidden_act={d['hidden_act']!r}: scratchlm's llama uses silu")
    # Newer transformers write RoPE in rope_parameters; older ones rope_scaling and a top-level rope_theta.
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(
            f"rope_type={rope.get('rope_type', rope.get('type'))!r}: only default RoPE is supported"
        )
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    qwen3 = d.get("model_type") == "qwen3"
    # Qwen3 has no MLP biases: its attention_bias must be false for scratchlm's one model.bias.
    if bool(d.get("attention_bias", False)) != bool(d.get("mlp_bias", False)):
        raise UserError("attention_bias != mlp_bias: scratchlm's model.bias sets both")
    if qwen3 and d.get("use_sliding_window"):
        raise UserError("use_sliding_window=true: scratchlm's attention is full causal attention")
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
        qk_norm=qwen3,
        tie_embeddings=d.get("tie_word_embeddings", False),
        rope_theta=float(theta),
        norm_eps=d.get("rms_norm_eps", 1e-6),
        vocab_multiple=vocab_multiple,
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

    out["model.embed_tokens.weight"] = sd["transformer.wte.weight"][:V]
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = sd[p + "ln_1.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "ln_2.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            qkv = sd[p + "attn.c_attn." + suffix].split(cfg.qkv_rows, dim=0)
            for name, t in zip(("q_proj", "k_proj", "v_proj"), qkv, strict=True):
                out[q + f"self_attn.{name}.{suffix}"] = t.contiguous()
            out[q + f"self_attn.o_proj.{suffix}"] = sd[p + "attn.c_proj." + suffix]
            up, gate = sd[p + "mlp.c_fc." + suffix].chunk(2, dim=0)  # one Linear, rows [up; gate]
            out[q + f"mlp.gate_proj.{suffix}"] = gate.contiguous()
            out[q + f"mlp.up_proj.{suffix}"] = up.contiguous()
            out[q + f"mlp.down_proj.{suffix}"] = sd[p + "mlp.c_proj." + suffix]
        if cfg.qk_norm:  # (head_dim,): one gain shared by every head, as in Qwen3
            out[q + "self_attn.q_norm.weight"] = sd[p + "attn.q_norm.weight"]
            out[q + "self_attn.k_norm.weight"] = sd[p + "attn.k_norm.weight"]
    out["model.norm.weight"] = sd["transformer.ln_f.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"][:V]
    return out


def to_hf_model(model, bos_id=None, eos_id=None, pad_id=None, dtype: torch.dtype = torch.float32):
    """An in-memory transformers model (the class hf_class names) with the weights of a scratchlm GPT."""
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
            if cfg.qk_norm:
                out[p + "attn.q_norm.weight"] = take(q + "self_attn.q_norm.weight")
                out[p + "attn.k_norm.weight"] = take(q + "self_attn.k_norm.weight")
        out["transformer.ln_f.weight"] = take("model.norm.weight")
        head = "model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"
    out["lm_head.weight"] = out["transformer.wte.weight"] if cfg.tie_embeddings else _pad_rows(take(head), P)
    return out


def from_hf_model(hf_model, vocab_multiple: int = 64):
    """A scratchlm GPT with the weights of an in-memory GPT-2, Llama or Qwen3 model of transformers."""
    from ..model import GPT

    cfg = model_config_from_hf(hf_model.config.to_dict(), vocab_multiple)
    model = GPT(cfg)
    sd = {k: v.detach().cpu().float() for k, v in hf_model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    model.load_state_dict(from_hf_state_dict(sd, cfg))
    return model.eval()


def start_id(tokenizer) -> int:
    """The token `scratchlm sample` puts before every prompt (<|bos|>, which starts every training
    document). Exports declare it as the BOS id, so transformers' generate() from nothing and llama.cpp's
    automatic BOS feed the model what scratchlm feeds it."""
    return tokenizer.bos_id
