"""scratchlm's model as an lm-evaluation-harness model: lm-eval's tasks score a run in process.

lm-eval asks a model three things (lm_eval.api.model.LM): the log-likelihood of a continuation after a
context (multiple choice, cloze), of a whole text in windows (perplexity tasks), and a greedy generation up
to stop strings. `ScratchLM` answers them with the run's own model and tokenizer:

- Every context starts with <|bos|>, as every training document does (data/shards.py): the model reads a
  task's prompt as the beginning of a text. That is lm-eval's HFLM with add_bos_token=True on the run's
  Hugging Face export, which gives the same numbers (tests/test_harness.py).
- Continuations that share a context (the choices of a multiple-choice question, and all of them when the
  few-shot examples make the context long) are scored on one prefill of that context: its KV cache is
  copied to one row per choice and only the continuations run again. HFLM runs each choice's whole
  sequence.
- The run's context length is the limit: an input longer than block_size + 1 tokens is cut from the left,
  as HFLM cuts it, and counted (`.truncated`, reported beside the scores).
- Generation runs on the engine (engine.py: the KV-cache decoder with continuous batching), greedy unless
  a task asks for sampling; a prompt keeps its newest decode.prompt_budget tokens so the answer has room.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from .chat_template import BOS, END, ROLE_TOKENS, jinja_template, stop_ids
from .common import is_interactive
from .config import SampleConfig
from .decode import TextStream, prompt_budget
from .engine import Engine
from .model import GPT, KVCache

Pair = tuple[tuple[int, ...], list[int]]  # (context ids, continuation ids), fitted to the context length


class ScratchLM(TemplateLM):
    """An lm_eval model over a scratchlm GPT and its tokenizer.

    batch_size: rows per forward pass (continuations scored together; sequences generated together).
    chat: the prompts are chat conversations rendered by lm-eval's --apply_chat_template through
    `apply_chat_template` (an SFT run's layout, chat_template.py); generation then also stops at <|end|>.
    """

    def __init__(self, model: GPT, tokenizer, batch_size: int = 16, chat: bool = False):
        super().__init__()
        self.model, self.tok, self.chat = model.eval(), tokenizer, chat
        self.block = model.config.block_size
        self.batch_size = batch_size
        self._device = model.transformer.wte.weight.device
        self.truncated: Counter[str] = Counter()  # inputs cut from the left, per request kind
        # Log-likelihood requests per (task, question): a multiple-choice question's number of choices, from
        # which benchmarks.py reports the task's chance level.
        self.requests_per_doc: Counter[tuple[str, int]] = Counter()

    # ---------------------------------------------------------------- what lm-eval reads
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context and every rolling window start from: <|bos|>, a text's first token."""
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self.block

    @property
    def tokenizer_name(self) -> str:
        return f"scratchlm-{self.tok.kind}-{self.tok.hash}"

    def chat_template(self, chat_template: bool | str = False) -> str:
        return jinja_template()

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """lm-eval's (few-shot) conversation as the text scratchlm's chat template renders (the Jinja of
        chat_template.py); `tok_encode` turns its special-token text back into the special ids."""
        text = BOS + "".join(ROLE_TOKENS[m["role"]] + m["content"] + END for m in chat_history)
        return text + (ROLE_TOKENS["assistant"] if add_generation_prompt else "")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """<|bos|> + the ids of `string` (without it when add_special_tokens is False, or when a rendered
        chat already starts with it). In chat mode the chat layout's special-token text becomes the special
        ids: lm-eval hands the rendered conversation over as text."""
        if self.chat:
            ids = self.tok.encode(string, allow_special=True)
            if add_special_tokens is not False and ids[:1] != [self.tok.bos_id]:
                ids.insert(0, self.tok.bos_id)
            return ids
        return self.tok.encode(string, bos=add_special_tokens is not False)

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids)

    # ---------------------------------------------------------------- log-likelihoods
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        for req in requests:
            self.requests_per_doc[(req.task_name, req.doc_id)] += 1
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding gives it) per (strings, context
        ids, continuation ids) request."""
        pairs = [self._fit(context, continuation) for _, context, continuation in requests]
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        bar = tqdm(
            total=len(pairs),
            desc="log-likelihoods",
            disable=disable_tqdm or not is_interactive(),
            leave=False,
        )
        for unit in self._units(pairs):
            for i, answer in self._score_unit(unit, pairs):
                results[i] = answer
            bar.update(sum(len(rows) for _, rows in unit))
        bar.close()
        return results  # type: ignore[return-value]

    def _fit(self, context: Sequence[int], continuation: Sequence[int]) -> Pair:
        """The pair the model reads: context + continuation cut from the left to block_size + 1 tokens (the
        last one is only predicted). A continuation longer than the context length keeps its last
        block_size tokens scored, the one before them read as context."""
        seq = list(context) + list(continuation)
        if len(seq) > self.block + 1:
            self.truncated["loglikelihood"] += 1
            seq = seq[-(self.block + 1) :]
        n = min(len(continuation), len(seq) - 1)
        return tuple(seq[:-n]), seq[-n:]

    def _units(self, pairs: list[Pair]) -> list[list[tuple[tuple[int, ...], list[int]]]]:
        """Pairs grouped by context, longest first, then packed into prefill units: contexts prefilled
        together whose continuations fill at most batch_size rows (a context with more continuations
        is a unit of its own) and fit the context length together."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (context, _) in enumerate(pairs):
            groups.setdefault(context, []).append(i)
        order = sorted(groups.items(), key=lambda g: (-len(g[0]), -max(len(pairs[i][1]) for i in g[1])))
        units, unit, rows, widest, longest = [], [], 0, 0, 0
        for context, members in order:
            cont = max(len(pairs[i][1]) for i in members) - 1
            fits = (
                rows + len(members) <= self.batch_size
                and max(longest, len(context)) + max(widest, cont) <= self.block
            )
            if unit and not fits:
                units.append(unit)
                unit, rows, widest, longest = [], 0, 0, 0
            unit.append((context, members))
            rows, widest, longest = rows + len(members), max(widest, cont), max(longest, len(context))
        if unit:
            units.append(unit)
        return units

    @torch.inference_mode()
    def _score_unit(self, unit, pairs: list[Pair]) -> list[tuple[int, tuple[float, bool]]]:
        """Prefill the unit's contexts together, then run their continuations in rows of batch_size on the
        cached contexts. A continuation's first token is scored from the prefill's logits, which are
        computed only from the shortest context's end on."""
        lengths = [len(context) for context, _ in unit]
        cont_width = max(len(pairs[i][1]) for _, members in unit for i in members) - 1
        cache = KVCache.empty(
            self.model.config, len(unit), max(lengths) + cont_width, self._device, self._dtype()
        )
        x = _padded([list(context) for context, _ in unit], self._device)  # (contexts, T)
        keep = x.size(1) - min(lengths) + 1
        logits, _ = self.model(x, cache=cache, logits_to_keep=keep)  # (contexts, keep, vocab)
        offset = x.size(1) - keep
        first = torch.stack([logits[g, n - 1 - offset] for g, n in enumerate(lengths)])  # (contexts, vocab)
        rows = [(g, i) for g, (_, members) in enumerate(unit) for i in members]
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            out += self._score_rows(chunk, pairs, cache, first, lengths)
        return out

    def _score_rows(self, chunk, pairs: list[Pair], cache: KVCache, first, lengths):
        """The continuations of `chunk` (context index, request index): each row's log-probabilities are
        its context's last logits then those of its own continuation read after the cached context."""
        conts = [pairs[i][1] for _, i in chunk]
        rest = None
        if max(map(len, conts)) > 1:
            x = _padded([c[:-1] or c[:1] for c in conts], self._device)  # (rows, T); a 1-token row pads
            rest, _ = self.model(
                x, cache=_rows_cache(cache, [g for g, _ in chunk], lengths)
            )  # (rows, T, vocab)
        out = []
        for r, ((g, i), cont) in enumerate(zip(chunk, conts, strict=True)):
            row = first[g][None] if len(cont) == 1 else torch.cat([first[g][None], rest[r, : len(cont) - 1]])
            logp = torch.log_softmax(row.float(), dim=-1)  # (len(cont), vocab)
            target = torch.tensor(cont, device=self._device)
            score = float(logp.gather(1, target[:, None]).sum())
            out.append((i, (score, bool((logp.argmax(-1) == target).all()))))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text: its ids after <|bos|> in windows of the context length,
        each predicted token scored once (lm-eval's rolling windows, as HFLM builds them)."""
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            ids = self.tok.encode(text, allow_special=self.chat)
            for context, continuation in map(
                make_disjoint_window, get_rolling_token_windows(ids, self.prefix_token_id, self.block, 1)
            ):
                windows.append((None, context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[n] += score
        return totals

    # ---------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation up to its first stop string (lm-eval's `until`), <|eos|> (and
        <|end|> in chat mode) or max_gen_toks new tokens; all decoded together on the engine."""
        jobs = [self._generation_job(context, dict(kwargs)) for context, kwargs in (r.args for r in requests)]
        stops = set(stop_ids(self.tok)) if self.chat else {self.tok.eos_id}
        bar = tqdm(
            total=len(jobs), desc="generations", disable=disable_tqdm or not is_interactive(), leave=False
        )
        with Engine(self.model, max_batch=self.batch_size, max_queue=max(1, len(jobs))) as engine:
            texts = asyncio.run(_generate_all(engine, self.tok, jobs, stops, bar))
        bar.close()
        return texts

    def _generation_job(self, context: str, kwargs: dict) -> tuple[list[int], SampleConfig, list[str]]:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", 256))
        sampled = kwargs.pop("do_sample", False) or float(kwargs.get("temperature", 0.0)) > 0
        cfg = SampleConfig(
            max_new_tokens=max_new,
            temperature=float(kwargs.get("temperature", 1.0) or 1.0) if sampled else 0.0,
            top_p=float(kwargs.get("top_p", 1.0) or 1.0) if sampled else 1.0,
            top_k=int(kwargs.get("top_k", 0) or 0) if sampled else 0,
            seed=1234,
        )
        ids = self.tok_encode(context)
        keep = prompt_budget(self.block, max_new)
        if len(ids) > keep:
            self.truncated["generate_until"] += 1
            ids = ids[-keep:]
        return ids, cfg, until

    def _dtype(self) -> torch.dtype:
        return self.model.transformer.wte.weight.dtype


def _rows_cache(cache: KVCache, groups: list[int], lengths: list[int]) -> KVCache:
    """A cache whose row r holds context groups[r], positioned after it. One row reads its context's row
    in place (its continuation overwrites what a longer context's padding left there, and the next
    continuation overwrites it again); rows of one context share a position (the scalar path); rows of
    several contexts each continue from their own."""
    if len(groups) == 1:
        g = groups[0]
        return KVCache([k.narrow(0, g, 1) for k in cache.k], [v.narrow(0, g, 1) for v in cache.v], lengths[g])
    index = torch.tensor(groups, device=cache.k[0].device)
    k, v = [t.index_select(0, index) for t in cache.k], [t.index_select(0, index) for t in cache.v]
    if len(set(groups)) == 1:
        return KVCache(k, v, lengths[groups[0]])
    return KVCache(k, v, torch.tensor([lengths[g] for g in groups], device=index.device))


def _padded(rows: list[Sequence[int]], device) -> torch.Tensor:
    """Rows padded on the right with id 0 (a causal model's later positions never reach earlier ones)."""
    width = max(map(len, rows))
    x = torch.zeros(len(rows), width, dtype=torch.long)
    for r, ids in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return x.to(device)


async def _generate_all(engine: Engine, tok, jobs, stop_ids: set[int], bar) -> list[str]:
    async def one(ids: list[int], cfg: SampleConfig, until: list[str]) -> str:
        request = engine.submit(ids, cfg, stop_ids)
        stream, text = TextStream(tok, until), []
        async for token in request:
            text.append(stream.push(token))
            if stream.stopped:
                request.cancel()
                break
        else:
            text.append(stream.finish())
        bar.update(1)
        return "".join(text)

    return list(await asyncio.gather(*(one(*job) for job in jobs)))
