"""Sampling: a streaming generator of ids over a KV cache, and text on top of it."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .checkpoint import LoadedModel, load
from .config import SampleConfig
from .model import GPT, KVCache
from .run import Run


def pick_next(logits: torch.Tensor, cfg: SampleConfig, generator: torch.Generator) -> int:
    """One token id from the last position's logits (vocab,)."""
    if cfg.temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.numel():
        kth = torch.topk(logits, cfg.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_ids(
    model: GPT, prompt_ids: list[int], cfg: SampleConfig, stop_ids: set[int] = frozenset()
) -> Iterator[int]:
    """Yield new token ids one at a time. The prompt must be non-empty (callers add <|bos|>).

    Past the context window, the cache is rebuilt from the last 3/4 of a window: one prefill every
    block_size/4 tokens instead of a full forward per token.
    """
    block = model.config.block_size
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    history = list(prompt_ids[-block:])

    def prefill(ids: list[int]) -> tuple[torch.Tensor, KVCache]:
        cache = KVCache.empty(model.config, 1, block, device, next(model.parameters()).dtype)
        logits, _ = model(torch.tensor([ids], device=device), cache=cache)
        return logits[0, -1], cache

    logits, cache = prefill(history)
    for _ in range(cfg.max_new_tokens):
        token = pick_next(logits, cfg, generator)
        if token in stop_ids:
            return
        yield token
        history.append(token)
        if cache.pos >= block:
            logits, cache = prefill(history[-(3 * block // 4) :])
        else:
            logits, _ = model(torch.tensor([[token]], device=device), cache=cache)
            logits = logits[0, -1]


def stream_text(lm: LoadedModel, prompt: str, cfg: SampleConfig) -> Iterator[str]:
    """Yield text pieces as tokens arrive, holding back a piece while it ends in a split character."""
    tok = lm.tokenizer
    prompt_ids = tok.encode(prompt)
    if not prompt_ids or len(prompt_ids) < lm.model.config.block_size:
        prompt_ids = [tok.bos_id] + prompt_ids
    new_ids: list[int] = []
    emitted = ""
    for token in generate_ids(lm.model, prompt_ids, cfg, stop_ids={tok.eos_id}):
        new_ids.append(token)
        text = tok.decode(new_ids)
        if not text.endswith("\ufffd") and len(text) > len(emitted):
            yield text[len(emitted) :]
            emitted = text
    text = tok.decode(new_ids)
    if len(text) > len(emitted):
        yield text[len(emitted) :]


def generate_text(lm: LoadedModel, prompt: str, **overrides) -> str:
    cfg = dataclasses.replace(lm.config.sample, **overrides)
    return "".join(stream_text(lm, prompt, cfg))


def sample(
    run_dir: str | Path,
    prompt: str,
    cfg: SampleConfig | None = None,
    checkpoint: str = "best",
    out=sys.stdout,
) -> str:
    """Stream a continuation of the prompt to `out` and append it to RUN/samples.txt."""
    run = Run.at(run_dir)
    lm = load(run.root, checkpoint)
    cfg = cfg or lm.config.sample
    out.write(prompt)
    out.flush()
    pieces = []
    for piece in stream_text(lm, prompt, cfg):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    text = "".join(pieces)
    with open(run.samples_path, "a", encoding="utf-8") as f:
        f.write(
            f"--- step {lm.step}, seed {cfg.seed}, temperature {cfg.temperature}, top_k {cfg.top_k}\n"
            f"{prompt}{text}\n"
        )
    return text
