"""Sampling: a streaming generator of ids over a KV cache, and text on top of it.

The id level (`generate_ids`) knows nothing of text; the text level (`TextStream`) turns ids into
printable pieces, holding back a piece while it ends inside a multi-byte character or could be the
start of a stop string.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .checkpoint import Restored, load
from .common import UserError, atomic_write_text
from .config import SampleConfig
from .data.corpus import read_text
from .data.sources import get_field, jsonl_objects
from .model import GPT, KVCache
from .run import Run


def filter_logits(logits: torch.Tensor, cfg: SampleConfig, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The knobs in transformers' order: repetition penalty, temperature, top-k, top-p, min-p.

    logits (vocab,) → float logits with the dropped tokens at -inf. `seen` (vocab,) bool marks the
    tokens of the prompt and output so far (for the repetition penalty).
    """
    logits = logits.float()
    if cfg.repetition_penalty != 1.0 and seen is not None:
        # Divide positive logits and multiply negative ones, so a seen token always becomes less likely.
        penalized = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if cfg.temperature <= 0:
        return logits
    return filter_rows(logits[None], [cfg])[0]


def filter_rows(logits: torch.Tensor, cfgs: list[SampleConfig]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p for a batch of rows (rows, vocab), each row with its own cfg
    (temperature > 0). One code path for one row and many: every op here works on each row alone (an
    elementwise op, or a sort/topk/softmax/cumsum along the vocabulary), so a row gives the same bits in
    a batch as alone, which keeps the engine's batched picks equal to generate_ids'.
    """
    rows, vocab = logits.shape
    device = logits.device
    temperature = torch.tensor([[c.temperature] for c in cfgs], dtype=torch.float32, device=device)
    logits = logits.float() / temperature
    ks = [c.top_k if 0 < c.top_k < vocab else 0 for c in cfgs]
    if any(ks):
        k = torch.tensor([[max(x, 1)] for x in ks], device=device)
        kth = torch.topk(logits, max(ks), dim=-1).values.gather(1, k - 1)  # each row's own k-th largest value
        kth = kth.masked_fill(torch.tensor([[x == 0] for x in ks], device=device), float("-inf"))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(c.top_p < 1.0 for c in cfgs):
        top_p = torch.tensor([[c.top_p] for c in cfgs], dtype=torch.float32, device=device)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        # A row with top_p 1 drops nothing (its rounded running sum may pass 1.0).
        drop = ((probs.cumsum(-1) - probs) >= top_p) & (top_p < 1.0)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    if any(c.min_p > 0.0 for c in cfgs):
        min_p = torch.tensor([[c.min_p] for c in cfgs], dtype=torch.float32, device=device)
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def draw_rows(logits: torch.Tensor, generators: list[torch.Generator]) -> list[int]:
    """One id per row of filtered logits (rows, vocab), row i drawn with generators[i].

    Inverse-CDF sampling from ONE uniform per row: torch.multinomial draws an exponential per vocabulary
    entry, ~92 us of a 4096-token pick (issue 12's profile), where rand + cumsum + searchsorted cost a
    few us. A dropped token (probability 0) is never picked: searchsorted(right=True) returns the first
    i with cdf[i] > u, so cdf[i] > cdf[i-1], and u is kept below the total so such an i exists.
    """
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.stack([torch.rand(1, generator=g, device=logits.device) for g in generators])  # (rows, 1)
    u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).view(-1).tolist()


def pick_next(
    logits: torch.Tensor, cfg: SampleConfig, generator: torch.Generator, seen: torch.Tensor | None = None
) -> int:
    """One token id from the last position's logits (vocab,); temperature 0 is greedy."""
    plain_greedy = cfg.temperature <= 0 and (cfg.repetition_penalty == 1.0 or seen is None)
    if plain_greedy:
        return int(logits.argmax())
    logits = filter_logits(logits, cfg, seen)
    if cfg.temperature <= 0:
        return int(logits.argmax())
    return draw_rows(logits[None], [generator])[0]


@torch.inference_mode()
def generate_ids(
    model: GPT, prompt_ids: list[int], cfg: SampleConfig, stop_ids: set[int] = frozenset()
) -> Iterator[int]:
    """Yield new token ids one at a time. The prompt must be non-empty (callers start it with <|bos|>);
    only its last block_size tokens are used.

    Past the context window, the cache is rebuilt from the last 3/4 of a window: one prefill every
    block_size/4 tokens instead of a full forward per token.
    """
    if not prompt_ids:
        raise ValueError("generate_ids needs at least one prompt token (e.g. <|bos|>)")
    block = model.config.block_size
    weight = model.transformer.wte.weight
    device, dtype = weight.device, weight.dtype
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    history = list(prompt_ids[-block:])
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
        seen[torch.tensor(prompt_ids, device=device)] = True
    # One preallocated (1, 1) input reused for every decode step instead of a new tensor per token.
    step_input = torch.empty(1, 1, dtype=torch.long, device=device)

    def prefill(ids: list[int]) -> tuple[torch.Tensor, KVCache]:
        cache = KVCache.empty(model.config, 1, block, device, dtype)
        logits, _ = model(torch.tensor([ids], device=device), cache=cache)
        return logits[0, -1], cache

    logits, cache = prefill(history)
    for _ in range(cfg.max_new_tokens):
        token = pick_next(logits, cfg, generator, seen)
        if token in stop_ids:
            return
        yield token
        history.append(token)
        if seen is not None:
            seen[token] = True
        if cache.pos >= block:
            logits, cache = prefill(history[-(3 * block // 4) :])
        else:
            step_input.fill_(token)
            logits, _ = model(step_input, cache=cache)
            logits = logits[0, -1]


class TextStream:
    """Ids in, printable text out: never half a UTF-8 character, never any part of a stop string.

    The whole output is decoded again at each token (SentencePiece's byte pieces only form a
    character together), which costs microseconds for the few hundred tokens of a sample.
    """

    def __init__(self, tokenizer, stop: list[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """The new printable text after one more token; sets .stopped when a stop string appeared."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        hits = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._take(text, min(hits))
        whole = text.rstrip("\ufffd")  # a trailing U+FFFD is a character whose bytes are still coming
        safe = len(whole)
        for s in self.stop:  # hold back a tail that may grow into a stop string
            for k in range(min(len(s) - 1, len(whole)), 0, -1):
                if whole.endswith(s[:k]):
                    safe = min(safe, len(whole) - k)
                    break
        return self._take(text, safe)

    def finish(self) -> str:
        """Whatever was held back, once generation has ended without a stop string."""
        return "" if self.stopped else self._take(self.tokenizer.decode(self.ids), None)

    def _take(self, text: str, end: int | None) -> str:
        piece = text[self.emitted : end]
        self.emitted += len(piece)
        return piece


def prompt_ids_for(tokenizer, prompt: str, block_size: int, warn=None) -> list[int]:
    """<|bos|> + the prompt's ids; a prompt longer than the context keeps its end, with a notice.

    Every training document starts with <|bos|> (data/shards.py), so a prompt continues a text from
    its beginning, and an empty prompt samples a text from nothing.
    """
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    if len(ids) > block_size:
        if len(ids) - 1 > block_size:
            print(
                f"scratchlm: note: the prompt is {len(ids) - 1} tokens, longer than the model's context "
                f"of {block_size}; only its last {block_size} tokens are used",
                file=warn or sys.stderr,
                flush=True,
            )
        ids = ids[-block_size:]
    return ids


def stream_text(lm: Restored, prompt: str, cfg: SampleConfig, warn=None) -> Iterator[str]:
    """Yield text pieces of the continuation as tokens arrive; ends at <|eos|> or a stop string."""
    tok = lm.tokenizer
    prompt_ids = prompt_ids_for(tok, prompt, lm.model.config.block_size, warn)
    stream = TextStream(tok, cfg.stop)
    for token in generate_ids(lm.model, prompt_ids, cfg, stop_ids={tok.eos_id}):
        piece = stream.push(token)
        if piece:
            yield piece
        if stream.stopped:
            return
    piece = stream.finish()
    if piece:
        yield piece


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a text file, or per record of a .jsonl file ({"prompt": "..."})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts_file {path}: no such file")
    if path.suffix == ".jsonl":
        fix = 'give each line a "prompt" string'
        prompts = [get_field(obj, "prompt", where, fix) for where, obj in jsonl_objects(path)]
    else:
        prompts = [line for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts_file {path}: no prompts in it; write one prompt per line")
    return prompts


def append_samples(run: Run, entries: list[str]) -> None:
    """Add entries to RUN/samples.txt; the file is rewritten atomically, never left half-written."""
    old = run.samples_path.read_text(encoding="utf-8") if run.samples_path.is_file() else ""
    atomic_write_text(run.samples_path, old + "".join(entries))


def sample(
    run_dir: str | Path,
    prompt: str | list[str],
    cfg: SampleConfig | None = None,
    checkpoint: str = "best",
    out=None,
) -> str | list[str]:
    """Stream continuations of one prompt (or each of a list) to `out`; append them to RUN/samples.txt.

    Every prompt starts from the same seed, so its output does not depend on its place in a list.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    out = out or sys.stdout
    run = Run.at(run_dir)
    lm = load(run.root, checkpoint)
    cfg = cfg or lm.config.sample
    texts, entries = [], []
    for i, p in enumerate(prompts):
        if len(prompts) > 1:
            out.write(f"--- {i + 1}/{len(prompts)}\n")
        out.write(p)
        out.flush()
        pieces = []
        for piece in stream_text(lm, p, cfg):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        texts.append("".join(pieces))
        entries.append(
            f"--- step {lm.step}, seed {cfg.seed}, temperature {cfg.temperature}, top_k {cfg.top_k}, "
            f"top_p {cfg.top_p}, min_p {cfg.min_p}, repetition_penalty {cfg.repetition_penalty}\n"
            f"{p}{texts[-1]}\n"
        )
    append_samples(run, entries)
    return texts[0] if isinstance(prompt, str) else texts
