"""A minimal GPT-2-style model as "LLM from scratch" tutorials write it: a yardstick for bench/train.py.

The issue's reference ratio ("a well-known minimal GPT runs ~1.35x faster than GPT2LMHeadModel") comes
from a model of this shape, so bench/train.py --peer-minimal measures one here, on this machine, beside
scratchlm and GPT2LMHeadModel. Written for this benchmark: pre-LayerNorm blocks, no biases (such scripts'
default for training; bias=True puts them back), one Linear for q, k and v, SDPA with is_causal, exact
GELU, learned positions, a head tied to the embedding, an unpadded vocabulary, GPT-2's init, and Dropout
modules at p=0 as such scripts keep them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, p: float, bias: bool):
        super().__init__()
        self.heads, self.p = heads, p
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True
        )
        return self.drop(self.out(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, p: float, bias: bool):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width, bias=bias), nn.LayerNorm(width, bias=bias)
        self.attn = Attention(width, heads, p, bias)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width, bias=bias),
            nn.GELU(),
            nn.Linear(4 * width, width, bias=bias),
            nn.Dropout(p),
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class MinimalGPT(nn.Module):
    def __init__(
        self, vocab: int, block: int, layers: int, heads: int, width: int, p: float = 0.0, bias: bool = False
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(block, width)
        self.drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(Block(width, heads, p, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=bias)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() == 2:
                residual = name.endswith("attn.out.weight") or name.endswith("mlp.2.weight")
                nn.init.normal_(param, std=0.02 / (math.sqrt(2 * layers) if residual else 1.0))

    def forward(self, idx, targets):
        T = idx.size(1)
        x = self.drop(self.tok(idx) + self.pos(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
