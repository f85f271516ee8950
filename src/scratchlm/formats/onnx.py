"""Write a loaded run as a transformers.js folder: onnx/model.onnx with its KV cache as named inputs and
outputs, beside the Hugging Face config.json, generation_config.json and tokenizer files (hf_folder.py).

transformers.js runs a decoder-only model as one ONNX session whose inputs are input_ids, attention_mask,
position_ids (it passes them when the graph has the input: cumsum(attention_mask) - 1, pads at 1) and
past_key_values.{i}.key/value of (batch, kv_heads, past_len, head_dim), and whose outputs are logits and
present.{i}.key/value (past + new). Batch, sequence and past length are dynamic axes.

The graph is exported with torch.onnx's dynamo exporter from `KVForward`, which runs scratchlm's own modules
(so QK-norm, GQA and both flavours follow model.py) with the cache as separate tensors. attention_mask may
hold zeros for left padding: a padded key is hidden from every query, and a padded query sees only itself
(its logits are garbage, as in transformers, but never NaN). Only f32 is written.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common import UserError
from ..model import GPT, apply_rope

ONNX_FILE = "onnx/model.onnx"


def check_onnx_installed() -> None:
    """UserError naming the extra when torch.onnx's exporter cannot run (it needs onnx and onnxscript) or
    generation_config.json cannot be written (transformers)."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install 'scratchlm[onnx]'")


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names, as transformers.js feeds and reads them."""
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


class KVForward(nn.Module):
    """scratchlm's GPT as one cached step: (ids, mask, positions, past k/v per layer) → logits, present k/v.

    The embedding and head keep only the vocab_size real rows: the padding rows exist for matmul speed in
    training and would only grow the file.
    """

    def __init__(self, model: GPT):
        super().__init__()
        cfg = model.config
        self.cfg, self.blocks = cfg, model.transformer.h
        self.wpe, self.ln_f = model.transformer.wpe, model.transformer.ln_f
        V = cfg.vocab_size
        self.wte = nn.Parameter(model.transformer.wte.weight.detach()[:V].clone())
        tied = cfg.tie_embeddings
        self.head = self.wte if tied else nn.Parameter(model.lm_head.weight.detach()[:V].clone())
        if cfg.flavour == "llama":
            self.register_buffer("rope_cos", model.rope_cos, persistent=False)
            self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        B, T = input_ids.shape
        x = F.embedding(input_ids, self.wte)  # (B, T, n_embd)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:  # (B, 1, T, head_dim): one rotation per row and position
            rope = (self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1))
        P = past[0].shape[2]
        # Query t sits at slot P + t: it sees earlier slots the mask keeps, and always itself.
        slots = torch.arange(P + T, device=x.device)
        at = P + torch.arange(T, device=x.device)
        causal = slots[None, :] <= at[:, None]  # (T, P + T)
        visible = causal[None] & attention_mask.bool()[:, None, :]  # (B, T, P + T)
        visible = visible | (slots[None, :] == at[:, None])[None]
        present = []
        for i, block in enumerate(self.blocks):
            h, k, v = self._attend(block.attn, block.ln_1(x), rope, past[2 * i], past[2 * i + 1], visible)
            x = x + h
            x = x + block.mlp(block.ln_2(x))
            present += [k, v]
        logits = F.linear(self.ln_f(x), self.head)  # (B, T, vocab_size)
        return logits, *present

    @staticmethod
    def _attend(attn, x, rope, past_k, past_v, visible):
        """model.py's CausalSelfAttention on an explicit cache and mask: its output, and the keys and values
        so far."""
        B, T, C = x.shape
        nh, nkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
        qkv = attn.c_attn(x).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # (B, heads, T, hd)
        q, k, v = qkv.split_with_sizes([nh, nkv, nkv], dim=1)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = torch.cat([past_k, k], dim=2)  # (B, n_kv_head, P + T, hd)
        v = torch.cat([past_v, v], dim=2)
        # Grouped-query attention without copies: query head h reads kv head h // (nh / nkv).
        g = nh // nkv
        qg = q.reshape(B, nkv, g, T, hd)  # (B, n_kv_head, group, T, hd)
        scores = qg @ k.unsqueeze(2).transpose(-1, -2) / hd**0.5  # (B, n_kv_head, group, T, P + T)
        scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
        y = scores.softmax(-1) @ v.unsqueeze(2)  # (B, n_kv_head, group, T, hd)
        y = y.reshape(B, nh, T, hd).transpose(1, 2).reshape(B, T, C)  # (B, T, n_embd)
        return attn.c_proj(y), k, v


def export_onnx(model: GPT, path: Path) -> None:
    """Export `model` (eval mode, f32) to an ONNX file with dynamic batch, sequence and past length."""
    cfg = model.config
    wrapper = KVForward(model.float().eval()).eval()
    B, T, P = 2, 3, 4  # example sizes other than 0 and 1, which torch.export would treat as constants
    kv_shape = (B, cfg.kv_heads, P, cfg.n_embd // cfg.n_head)
    past = [torch.zeros(kv_shape) for _ in range(2 * cfg.n_layer)]
    ids = torch.zeros(B, T, dtype=torch.long)
    args = (ids, torch.ones(B, P + T, dtype=torch.long), torch.arange(P, P + T).expand(B, T), past)
    batch, seq, past_len = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence"))
    total = torch.export.Dim.AUTO
    kv = {0: batch, 2: past_len}
    dynamic = (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        {0: batch, 1: seq},
        [kv] * len(past),
    )
    inputs, outputs = io_names(cfg.n_layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter logs a line per torchvision op it skips and warns about each axis name it merges: noise for
    # a user who asked for one file.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=inputs,
                output_names=outputs,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    program.save(str(path), external_data=False)


def write_onnx_folder(lm, tok_dir: Path, out: Path) -> None:
    """config.json (with transformers.js' dtype), generation_config.json, tokenizer files, onnx/model.onnx."""
    from .adapters import hf_config_dict, start_id
    from .hf_folder import write_generation_config, write_tokenizer_files

    tok = lm.tokenizer
    config = hf_config_dict(lm.config.model, start_id(tok), tok.eos_id, tok.pad_id)
    # transformers.js loads onnx/model_quantized.onnx by default in the browser: fp32 names the file written.
    config["transformers.js_config"] = {"dtype": "fp32"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_generation_config(lm, out)
    write_tokenizer_files(tok, tok_dir, out)
    export_onnx(lm.model, out / ONNX_FILE)
