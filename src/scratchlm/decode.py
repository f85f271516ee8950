"""The one decode step and the one prompt-fitting rule: every generator in scratchlm goes through here.

- `fit` decides what part of a prompt the model reads: the newest end, always. A prompt of ids keeps its
  last block_size ids; a conversation drops its oldest whole exchanges (the system prompt stays) so the
  reply has room. It returns what it dropped; each caller reports that its own way (a notice, a 400, a
  count in ChatReply).
- `Decoding` is one sequence being decoded: its window of ids, its seeded generator, the repetition
  penalty's `seen` set and its stop ids. A step is `pick` (filters + draw) → `accept` (stop id, length)
  → `refill` (the KV cache's position at the context end). Batch-1 generation (`generate_ids`) and the
  batched engine (engine.py) run this same step, so a seeded request gives the same ids from either.
- `TextStream` turns ids into printable text, holding back half characters and possible stop strings.

The id level knows nothing of text; the text level (`TextStream`, `stream_text`) sits on top of it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from . import chat_template
from .checkpoint import Restored
from .compiled import StepCache, compiled_step
from .config import SampleConfig
from .model import GPT, KVCache


# ---------------------------------------------------------------- the one prompt-fitting rule
@dataclass(frozen=True)
class Fitted:
    """A prompt cut to what the model reads."""

    ids: list[int]
    """The ids the model reads first: the newest end of the prompt."""
    dropped: int
    """What was left out from the start: ids for a prompt of ids, whole messages for a conversation."""
    messages: list[Mapping] | None = None
    """A conversation's kept messages (None for a prompt of ids)."""


def prompt_budget(block_size: int, max_new_tokens: int) -> int:
    """The tokens of the context a chat prompt may use. The rest, up to half the context, is the reply's,
    so a reply starts with the whole conversation in view; past the context, the decoder slides its
    window and the start of the conversation falls out of it."""
    return block_size - min(max_new_tokens, block_size // 2)


def fit(
    prompt: Sequence[int] | Sequence[Mapping],
    block_size: int,
    max_new_tokens: int = 0,
    *,
    tokenizer=None,
    keep_last: int | None = None,
) -> Fitted:
    """The part of `prompt` the model reads, and what was dropped; the newest end is always the one kept.

    Ids: the last min(keep_last, block_size) ids. max_new_tokens does not shrink them: a plain prompt
    uses the whole context and the reply slides the window, as `scratchlm sample` always did.
    Messages (needs `tokenizer`): rendered with <|assistant|> at the end, within
    prompt_budget(block_size, max_new_tokens); the oldest user + assistant exchanges go first, whole,
    the system message stays (chat_template.fit_prompt). UserError when the system message and the
    last user message alone do not fit: cutting into a message would change what was asked.
    """
    if prompt and isinstance(prompt[0], Mapping):
        budget = prompt_budget(block_size, max_new_tokens)
        kept, dropped = chat_template.fit_prompt(prompt, tokenizer, budget)
        ids = chat_template.render(kept, tokenizer, add_generation_prompt=True).ids
        return Fitted(ids, dropped, kept)
    limit = block_size if keep_last is None else min(keep_last, block_size)
    ids = list(prompt[-limit:]) if limit > 0 else []
    return Fitted(ids, len(prompt) - len(ids))


def prompt_ids_for(tokenizer, prompt: str, block_size: int, warn=None) -> list[int]:
    """<|bos|> + the prompt's ids, fitted (`fit`); a prompt longer than the context gets a notice.

    Every training document starts with <|bos|> (data/shards.py), so a prompt continues a text from
    its beginning, and an empty prompt samples a text from nothing.
    """
    fitted = fit([tokenizer.bos_id] + tokenizer.encode(prompt), block_size)
    if fitted.dropped > 1:  # <|bos|> alone going is no loss of the user's text: no notice for it
        print(
            f"scratchlm: note: the prompt is {fitted.dropped - 1 + block_size} tokens, longer than the "
            f"model's context of {block_size}; only its last {block_size} tokens are used",
            file=warn or sys.stderr,
            flush=True,
        )
    return fitted.ids


# ---------------------------------------------------------------- sampling filters and the draw
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


# ---------------------------------------------------------------- log-probabilities
@dataclass(frozen=True)
class TokenLogprobs:
    """One generated id's log-probability and the k most likely ids' (most likely first)."""

    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, token: int, k: int) -> TokenLogprobs:
    """log_softmax of the raw logits (vocab,), before any sampling filter: the model's own distribution,
    as OpenAI and vLLM report it, so a greedy and a sampled request see the same numbers. Read on the
    logits the pick used, so the engine adds nothing to the pick itself (batched == alone holds)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logp, min(k, logp.numel())) if k > 0 else None
    pairs = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    return TokenLogprobs(float(logp[token]), pairs)


# ---------------------------------------------------------------- the one decode step
class Decoding:
    """One sequence being decoded. Per step: `pick` the next id from `.logits`, `accept` it (a stop id
    ends the sequence unseen), then `refill` tells whether the KV cache must be rebuilt before the id
    goes in. `.finish_reason` is None while going, then "stop" or "length".
    """

    def __init__(
        self, prompt_ids: Sequence[int], cfg: SampleConfig, stop_ids, block_size: int, vocab_size: int, device
    ):
        self.cfg, self.stop_ids, self.block = cfg, frozenset(stop_ids), block_size
        self.history = fit(prompt_ids, block_size).ids  # what the model sees; grows with each new id
        self.prompt_tokens = len(self.history)
        self.new_tokens = 0
        self.finish_reason: str | None = None
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.seen: torch.Tensor | None = None
        if cfg.repetition_penalty != 1.0:  # the whole prompt counts, the part cut to fit included
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(list(prompt_ids), device=device)] = True
        self.logits: torch.Tensor | None = None  # (vocab,) for the next pick
        self.picked: int | None = None  # the next id when pick_together drew it with a batch

    def pick(self) -> int:
        """The next id: the one pick_together drew, else filtered and drawn from .logits alone."""
        token, self.picked = self.picked, None
        if token is None:
            token = pick_next(self.logits, self.cfg, self.generator, self.seen)
        return token

    def accept(self, token: int) -> bool:
        """Add a picked id to the output; False at a stop id, which is not output (finish "stop").
        Sets finish_reason "length" on the max_new_tokens-th id, which is still output."""
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return False
        self.history.append(token)
        if self.seen is not None:
            self.seen[token] = True
        self.new_tokens += 1
        if self.new_tokens >= self.cfg.max_new_tokens:
            self.finish_reason = "length"
        return True

    def refill(self, pos: int) -> list[int] | None:
        """At a full cache (`pos` = block_size), the ids to rebuild it from before the newest id goes in:
        the last 3/4 of a window but that id. One prefill every block_size/4 tokens instead of a full
        forward per token once the context is full."""
        if pos < self.block:
            return None
        return self.history[-max(3 * self.block // 4, 1) : -1]


def pick_together(rows: Sequence[Decoding]) -> None:
    """Draw the next ids of all plain sampling rows (temperature > 0, no repetition penalty) at once, and
    take the plain greedy rows' argmax at once; each row's `pick` then returns its own. Rows with a
    penalty (their own `seen`) pick alone.

    pick_next is the same filter_rows + draw_rows on one row, and those work on each row alone, so a
    row's id is the same bits as its own pick (tests/test_engine.py). Per-row picks cost ~0.13-0.17 ms a
    row at 16 rows, as much as half the batched forward's share (issue 12's profile).
    """
    greedy = [d for d in rows if d.cfg.temperature <= 0 and d.seen is None]
    if len(greedy) > 1:  # one argmax for all: each row's is the same id as alone (the first of a tie)
        for d, token in zip(greedy, torch.stack([d.logits for d in greedy]).argmax(-1).tolist(), strict=True):
            d.picked = token
    plain = [d for d in rows if d.cfg.temperature > 0 and d.seen is None]
    if len(plain) < 2:
        return
    logits = filter_rows(torch.stack([d.logits for d in plain]), [d.cfg for d in plain])
    for d, token in zip(plain, draw_rows(logits, [d.generator for d in plain]), strict=True):
        d.picked = token


def prefill(model: GPT, cache: KVCache, ids: list[int]) -> torch.Tensor:
    """Run `ids` from position 0 into a one-row cache (or one row of the engine's): the last logits."""
    cache.pos = 0
    logits, _ = model(torch.tensor([ids], device=cache.k[0].device), cache=cache)
    return logits[0, -1]


class Steps:
    """The decode step on a one-row cache, eager or compiled. Eager: `cache.pos` is an int and attention
    reads the filled part of the cache. Compiled: after each prefill the step cache's (1,) position tensor
    is set and the step moves it on; every step has the same shapes (or, for long contexts, one symbolic
    length: `StepCache`), so inductor compiles it once."""

    def __init__(self, model: GPT, compile: bool):
        weight = model.transformer.wte.weight
        self.model = model
        self.compiled = compiled_step(model) if compile else None
        if compile:
            self.step_cache = StepCache(model, 1)
            self.cache = self.step_cache.cache
        else:
            self.cache = KVCache.empty(model.config, 1, model.config.block_size, weight.device, weight.dtype)
        self.pos = 0  # the cache's position as a Python int, whichever form cache.pos has
        # One preallocated (1, 1) input reused for every decode step instead of a new tensor per token.
        self.input = torch.empty(1, 1, dtype=torch.long, device=weight.device)

    def prefill(self, ids: list[int]) -> torch.Tensor:
        logits = prefill(self.model, self.cache, ids)
        self.pos = len(ids)
        if self.compiled is not None:
            self.step_cache.positions.fill_(self.pos)
        return logits

    def __call__(self, token: int) -> tuple[torch.Tensor, int | None]:
        """The logits after `token`, and their argmax when the step computed it (compiled)."""
        self.input.fill_(token)
        self.pos += 1
        if self.compiled is None:
            logits, _ = self.model(self.input, cache=self.cache)
            return logits[0, -1], None
        logits, best = self.compiled(self.model, self.input, self.step_cache.view(1, self.pos))
        return logits, int(best)


@torch.inference_mode()
def generate_ids(
    model: GPT, prompt_ids: list[int], cfg: SampleConfig, stop_ids: set[int] = frozenset()
) -> Iterator[int]:
    """Yield new token ids one at a time: the decode step on a batch of one. The prompt must be
    non-empty (callers start it with <|bos|>); it is fitted to the context by `fit`. With cfg.compile the
    step is compiled (`compiled_step`); its logits equal the eager ones up to float rounding (the order of
    a matmul's sums), so only a near-tie between the top two tokens could pick otherwise."""
    if not prompt_ids:
        raise ValueError("generate_ids needs at least one prompt token (e.g. <|bos|>)")
    device = model.transformer.wte.weight.device
    d = Decoding(prompt_ids, cfg, stop_ids, model.config.block_size, model.config.vocab_size, device)
    steps = Steps(model, cfg.compile)
    d.logits = steps.prefill(d.history)
    greedy = cfg.temperature <= 0 and d.seen is None
    while True:
        token = d.pick()
        if not d.accept(token):
            return
        yield token
        if d.finish_reason is not None:
            return
        refill = d.refill(steps.pos)
        if refill is not None:
            steps.prefill(refill)
        d.logits, best = steps(token)
        if greedy and best is not None:
            d.picked = best


# ---------------------------------------------------------------- text
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
