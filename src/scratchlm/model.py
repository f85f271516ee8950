"""The GPT, readable top to bottom: norm → attention → MLP → block → GPT.

Two flavours, chosen by `ModelConfig.flavour`, with the math of their transformers namesakes so
export is a plain key map:
- "gpt2":  learned positions, LayerNorm, GELU (exact, or GPT-2's tanh approximation), biases, tied head.
- "llama": RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention, optional QK-norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

GPTConfig = ModelConfig


def norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.flavour == "llama":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def _rms(x: torch.Tensor, n: nn.RMSNorm) -> torch.Tensor:
    return F.rms_norm(x, n.normalized_shape, n.weight.to(x.dtype), n.eps)


def dropout(p: float) -> nn.Module:
    # A Dropout module costs ~15 us per call even at p=0 in eval mode (9 of them per token in the
    # 4-layer bench model: ~3% of a decode step on CPU); an Identity ~3 us.
    return nn.Dropout(p) if p > 0 else nn.Identity()


# ---------------------------------------------------------------- rotary position embedding
def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, (max_len, head_dim) each, in HF Llama's "rotate half" layout.

    The sin table comes with the sign of the rotation folded into its first half, so apply_rope needs
    no negation: one op less per q and k in every layer, which shows in CPU decoding.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, head_dim/2)
    sin = angles.sin()
    return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1) and the minus already in signed_sin.

    x is (B, heads, T, head_dim). (x2, x1) is x rolled by half a head: one op instead of two slices and
    a cat; 3 ops in all, which matters at batch 1 where each op costs more than its arithmetic.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


# ---------------------------------------------------------------- KV cache for generation
@dataclass
class KVCache:
    """Keys and values of past positions, preallocated per layer: (B, n_kv_head, max_len, head_dim).

    `pos` is where the next tokens go: an int shared by every row (decode.py's batch of 1, eval), or a
    (B,) long tensor, one position per row, so rows of different lengths decode together (engine.py).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    pos: int | torch.Tensor = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> KVCache:
        shape = (batch, cfg.kv_heads, max_len, cfg.n_embd // cfg.n_head)
        return cls(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
        )

    def rows(self, start: int, n: int) -> KVCache:
        """Rows start..start+n as a cache of their own: views, so its writes and position moves land here."""
        pos = self.pos if isinstance(self.pos, int) else self.pos.narrow(0, start, n)
        return KVCache([k.narrow(0, start, n) for k in self.k], [v.narrow(0, start, n) for v in self.v], pos)

    def prefix(self, length: int) -> KVCache:
        """The first `length` positions of every row as a cache of their own: views, as in `rows`."""
        k, v = [t.narrow(2, 0, length) for t in self.k], [t.narrow(2, 0, length) for t in self.v]
        return KVCache(k, v, self.pos)


@dataclass
class RowSlots:
    """Where each row's new tokens go when rows sit at different positions (a per-row KVCache)."""

    rows: torch.Tensor  # (B, 1): each row's index
    at: torch.Tensor  # (B, T): each new token's position in its row
    mask: torch.Tensor  # (B, 1, T, L): query t of row b sees keys 0..at[b, t] (bool, or 0 / -inf to add)


# ---------------------------------------------------------------- attention
class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.kv_heads
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, sum(cfg.qkv_rows), bias=cfg.bias)  # q, k and v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual = True  # scaled init, see GPT.init_weights
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_dropout = dropout(cfg.dropout)

    def forward(self, x, rope=None, cache: KVCache | None = None, layer=0, slots: RowSlots | None = None):
        B, T, C = x.shape
        nh, nkv = self.n_head, self.n_kv_head
        qkv = self.c_attn(x).view(B, T, nh + 2 * nkv, self.head_dim).transpose(1, 2)  # (B, heads, T, hd)
        # split_with_sizes, not .split: Tensor.split's Python wrapper costs a few us per call in decoding.
        qk, v = qkv.split_with_sizes([nh + nkv, nkv], dim=1)
        if self.q_norm is not None:
            q, k = qk.split_with_sizes([nh, nkv], dim=1)
            # Under bf16 autocast q and k arrive in bf16: gains of their dtype keep the fused kernel (float32
            # gains against bf16 inputs fall back to the unfused one, with a warning).
            qk = torch.cat([_rms(q, self.q_norm), _rms(k, self.k_norm)], dim=1)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # q and k rotated together: half the ops of one call each
        q, k = qk.split_with_sizes([nh, nkv], dim=1)  # (B, n_head, T, hd), (B, n_kv_head, T, hd)

        mask, is_causal = None, True
        if slots is not None:
            # Advanced indices around a slice put their (B, T) dims first: the target is (B, T, n_kv_head, hd)
            cache.k[layer][slots.rows, :, slots.at] = k.transpose(1, 2)
            cache.v[layer][slots.rows, :, slots.at] = v.transpose(1, 2)
            L = slots.mask.size(-1)
            k, v = cache.k[layer].narrow(2, 0, L), cache.v[layer].narrow(2, 0, L)  # (B, n_kv_head, L, hd)
            mask, is_causal = slots.mask, False
        elif cache is not None:
            start = cache.pos
            # narrow is one op where a [:, :, a:b] index is three; this runs twice per layer and token.
            cache.k[layer].narrow(2, start, T).copy_(k)
            cache.v[layer].narrow(2, start, T).copy_(v)
            k, v = cache.k[layer].narrow(2, 0, start + T), cache.v[layer].narrow(2, 0, start + T)
            if start > 0:
                is_causal = False
                if T > 1:  # new query i sees every cached key and the new keys up to itself
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)

        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, n_embd); a view when T == 1
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------- MLP
class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden
        self.swiglu = cfg.flavour == "llama"
        self.gelu_approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"  # gelu_tanh: "gelu_new"
        # SwiGLU's up and gate projections are one Linear: one matmul of 2 * hidden instead of two (export
        # splits it into up_proj / gate_proj, ffn_up / ffn_gate). Rows [up; gate]: the order the two
        # Linears had before they were fused, so the same seed still draws the same weights.
        self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden if self.swiglu else hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual = True
        self.dropout = dropout(cfg.dropout)

    def forward(self, x):
        if self.swiglu:
            up, gate = self.c_fc(x).chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(self.c_fc(x), approximate=self.gelu_approximate)
        return self.dropout(self.c_proj(h))


# ---------------------------------------------------------------- block
class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache=None, layer=0, slots=None):
        x = x + self.attn(self.ln_1(x), rope, cache, layer, slots)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------- GPT
class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        vocab = cfg.padded_vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.flavour == "gpt2" else None,
                drop=dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=norm(cfg, cfg.n_embd),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if cfg.flavour == "llama":
            cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's scheme: N(0, 0.02) for matrices and embeddings, zero biases, unit norms, and the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layer)."""
        std = 0.02
        for module in self.modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores (PaLM).

        The head counts even when it is tied to the embedding: the lookup is free, the (vocab x width)
        matmul is not, and in a 124M GPT-2 it is 30% of the work.
        """
        c = self.config
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul_weights + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ):
        """idx (B, T) → logits (B, T, vocab_size), and the mean loss when targets are given.

        Targets of -1 are ignored. With a cache, positions continue from `cache.pos` (per row when a tensor).
        logits_to_keep > 0 (transformers' name) computes the logits of the last that many positions only:
        a prefill that needs one position's logits skips the head's matmul for the rest.
        """
        B, T = idx.shape
        if cache is not None and not isinstance(cache.pos, int):
            return self._forward_rows(idx, cache, logits_to_keep)
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        rope = None
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # (T, head_dim)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.pos += T
        return self._head(x, targets, logits_to_keep)

    def forward_static(self, idx: torch.Tensor, cache: KVCache):
        """The cached forward at shapes that do not change from step to step, for torch.compile (decode.py):
        cache.pos is a (B,) tensor, and attention reads all of the cache it is given with a mask (the whole
        cache, or for long contexts its first positions: compiled.StepCache). The caller keeps every
        position below the cache's length (nothing here checks it: reading the position back into Python
        would break the compiled graph). Returns logits, None."""
        return self._forward_rows(idx, cache, static=True)

    def _forward_rows(self, idx: torch.Tensor, cache: KVCache, logits_to_keep: int = 0, static: bool = False):
        """The cached forward when each row continues from its own position cache.pos[b]: logits, None.

        A separate path so the scalar one (batch-1 sampling, eval) keeps its few ops per step.
        """
        B, T = idx.shape
        device = idx.device
        at = cache.pos.unsqueeze(1) + torch.arange(T, device=device)  # (B, T)
        if static:
            L = cache.k[0].size(2)
        else:
            L = int(at.max()) + 1  # keys up to the furthest row; shorter rows mask the rest
            if L > min(self.config.block_size, cache.k[0].size(2)):
                raise ValueError(f"sequence of {L} tokens exceeds block_size {self.config.block_size}")
        keys = torch.arange(L, device=device)
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        mask = (keys <= at.unsqueeze(-1)).unsqueeze(1)  # (B, 1, T, L)
        if not static:
            # Additive, built once: SDPA turns a bool mask into this with 4 ops in every layer (~4 us each).
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=device).masked_fill_(~mask, float("-inf"))
        slots = RowSlots(rows=torch.arange(B, device=device).unsqueeze(1), at=at, mask=mask)  # rows (B, 1)
        rope = None
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(at)  # (B, T, n_embd)
        else:
            rope = (self.rope_cos[at].unsqueeze(1), self.rope_sin[at].unsqueeze(1))  # (B, 1, T, head_dim)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, i, slots)
        cache.pos += T
        return self._head(x, None, logits_to_keep)

    def _head(self, x: torch.Tensor, targets: torch.Tensor | None, logits_to_keep: int = 0):
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, logits_to_keep, n_embd)
            targets = None if targets is None else targets[:, -logits_to_keep:]
        x = self.transformer.ln_f(x)
        # Padding rows of the head exist only for matmul speed: they are cut so they are never sampled.
        logits = self.lm_head(x)  # (B, T, padded_vocab_size)
        if logits.size(-1) != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss
