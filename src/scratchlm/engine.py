"""Batched decoding for many sequences at once: the server's worker.

One background thread owns the model. Each step it admits waiting requests into free rows of one
KV cache, prefills up to `prefill_chunk` prompt ids into the rows still filling (chunked prefill: each
chunk a batch-1 forward straight into its row, so a long prompt delays the running rows by one chunk
per step, never by its whole prefill), samples each row that has logits with its own seeded generator
(the plain sampling rows filtered and drawn together, one uniform per row), hands the ids to the
requests' consumers, then decodes every active row together in one forward with a position per row.
A finished or cancelled row leaves at once: the last row moves into its slot, so the active rows are
always rows 0..n-1 and a step computes nothing for empty ones (continuous batching).

The engine only batches and queues: each row is a `decode.Decoding` and takes the decode step of
batch-1 generation (`decode.generate_ids`): the same prompt fitting, filters and draw from the same seed,
stop ids, and rebuild of the cache from the last 3/4 of a window past the context end. So a seeded
request gives the same ids alone, in a batch, or from the CLI, up to float rounding between batch sizes.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator

import torch

from .compiled import StepCache, compiled_step
from .config import SampleConfig
from .decode import Decoding, TokenLogprobs, fit, pick_together, token_logprobs
from .model import GPT, KVCache


class QueueFull(Exception):
    """max_queue requests already wait for a row: the caller should answer "busy" (HTTP 429/503)."""


class Request:
    """One generation: the ids as the worker makes them, to iterate (threads) or async-iterate (asyncio).

    Every iteration starts from the first new id. finish_reason is None while running, then "stop" (a
    stop id came; it is not yielded), "length" (max_new_tokens), "cancelled" (cancel() or Engine.close())
    or "error" (the exception is raised to the consumer).

    With `top_logprobs` set (0 or more), `.logprobs[i]` is the i-th id's decode.TokenLogprobs, there as
    soon as that id is yielded; otherwise `.logprobs` stays empty.
    """

    def __init__(
        self,
        prompt_ids: list[int],
        cfg: SampleConfig,
        stop_ids: set[int],
        block_size: int,
        top_logprobs: int | None = None,
    ):
        self.cfg, self.stop_ids, self.prompt_ids = cfg, frozenset(stop_ids), prompt_ids
        self.top_logprobs = top_logprobs
        self.logprobs: list[TokenLogprobs] = []
        self.prompt_tokens = len(fit(prompt_ids, block_size).ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._ids: list[int] = []
        self._cond = threading.Condition()
        self._wakers: list = []  # (loop, event.set) per async iterator: wakes it from the worker thread
        self._sink = None  # the engine's collector while it holds this request: one wake per loop per step
        self._cancelled = False
        self.decoding: Decoding | None = None  # the worker's decode state while this request holds a row
        self._todo: list[int] = []  # ids still to prefill into the row (a prompt or a refill), from _done on
        self._done = 0
        self._refill = False  # the prefill is a refill: the newest id goes in after it, with the batch
        self._feed: int | None = None  # the id the batch's next forward puts in the row; None: sits out

    def cancel(self) -> None:
        """Ask the worker to drop this request at its next step (e.g. the client disconnected)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    # -- the worker's side
    def _push(self, token: int, logprobs: TokenLogprobs | None = None) -> None:
        with self._cond:
            if logprobs is not None:  # appended first: a consumer that sees the id finds its logprobs
                self.logprobs.append(logprobs)
            self._ids.append(token)
            self.completion_tokens += 1
            self._cond.notify_all()
        self._wake()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        with self._cond:
            if self.finish_reason is not None:
                return
            self.finish_reason, self.error = reason, error
            self.decoding = None  # its generator, `seen` and logits go with it
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        if self._sink is not None:
            return self._sink(self._wakers)
        for loop, wake in list(self._wakers):
            _call_in(loop, [wake])

    # -- the consumers' side
    def _after(self, i: int) -> tuple[list[int], bool]:
        with self._cond:
            return self._ids[i:], self.finish_reason is not None

    def _end(self) -> None:
        if self.error is not None:
            raise self.error

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            with self._cond:
                while len(self._ids) <= i and self.finish_reason is None:
                    self._cond.wait()
            new, done = self._after(i)
            yield from new
            i += len(new)
            if done and not new:
                self._end()
                return

    async def __aiter__(self) -> AsyncIterator[int]:
        # The lock is only ever held for a list append, so taking it here does not stall the loop.
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        wake = (loop, ready.set)
        self._wakers.append(wake)
        try:
            i = 0
            while True:
                ready.clear()  # before looking, so an id pushed after the look sets it again
                new, done = self._after(i)
                for token in new:
                    yield token
                i += len(new)
                if done and not new:
                    self._end()
                    return
                if not new:
                    await ready.wait()
        finally:
            self._wakers.remove(wake)


def _call_in(loop, fns: list) -> None:
    """Run fns on `loop` from another thread: one self-pipe write however many there are."""
    try:
        loop.call_soon_threadsafe(_call_all, fns)
    except RuntimeError:  # that consumer's event loop is closed: nobody is listening there
        pass


def _call_all(fns: list) -> None:
    for fn in fns:
        fn()


class Engine:
    """Decodes all submitted requests together on one worker thread; a context manager.

    Memory: one KV cache of max_batch x block_size positions per layer, allocated up front (for the
    124M GPT-2 preset in fp32: 12 layers x 2 x 16 rows x 12 heads x 1024 x 64 x 4 bytes = 1.2 GB).
    """

    def __init__(
        self,
        model: GPT,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 64,
        compile: bool = False,
    ):
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError(
                f"max_batch and prefill_chunk must be >= 1 and max_queue >= 0, "
                f"got {max_batch}, {prefill_chunk} and {max_queue}"
            )
        self.model, self.max_batch, self.max_queue = model.eval(), max_batch, max_queue
        self.prefill_chunk = prefill_chunk  # prompt ids prefilled per step, all new rows together
        self.block = model.config.block_size
        self.vocab = model.config.vocab_size
        weight = model.transformer.wte.weight
        self.device = weight.device
        # compile: the batch's forward runs as a compiled graph at a few batch sizes (powers of two up to
        # max_batch, each over the cache's views of StepCache); every graph is compiled here, before the
        # first request.
        self.compiled = compiled_step(model, rows=True) if compile else None
        self.buckets = sorted({min(2**i, max_batch) for i in range(max_batch.bit_length() + 1)})
        if compile:
            self.step_cache = StepCache(model, max_batch)
            self._tokens = {b: torch.zeros(b, 1, dtype=torch.long, device=self.device) for b in self.buckets}
            self.cache = self.step_cache.cache
            self._warm_up()
        else:
            self.cache = KVCache.empty(model.config, max_batch, self.block, self.device, weight.dtype)
            self.cache.pos = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self.active: list[Request] = []  # active[i] holds cache row i
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # Wakes collected during a step, sent once per event loop: a write to a loop's self-pipe from this
        # thread per token per request cost ~0.2 ms each (GIL hand-offs), a fifth of a 16-row step.
        self._wakes: dict = {}
        self._thread = threading.Thread(target=self._run, name="scratchlm-engine", daemon=True)
        self._thread.start()

    def submit(
        self,
        prompt_ids: list[int],
        cfg: SampleConfig,
        stop_ids: set[int] = frozenset(),
        top_logprobs: int | None = None,
    ) -> Request:
        """Queue a generation; it joins the running batch at the worker's next step. `top_logprobs`
        (0 or more): record each new id's log-probability and the most likely ids' (Request.logprobs)."""
        if not prompt_ids:
            raise ValueError("submit needs at least one prompt token (e.g. <|bos|>)")
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab]
        if bad:  # checked here: on a GPU an out-of-range id is a device assert that kills the whole process
            raise ValueError(f"prompt ids {bad[:5]} are outside the model's vocabulary of {self.vocab}")
        request = Request(list(prompt_ids), cfg, stop_ids, self.block, top_logprobs)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already wait; try again later")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def close(self) -> None:
        """Stop the worker; requests still waiting or running finish as "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ the worker
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self._waiting or self.active)
                    if self._closed:
                        break
                    joining = []
                    while self._waiting and len(self.active) + len(joining) < self.max_batch:
                        joining.append(self._waiting.popleft())
                for request in joining:
                    request._sink = self._collect
                    self._guard(request, self._admit)
                self._prefill_some()
                self._step()
                self._flush()
            for request in [*self.active, *self._waiting]:
                request._finish("cancelled")
            self._flush()
            self.active.clear()
            self._waiting.clear()

    def _guard(self, request: Request, fn, *args) -> None:
        """Run one request's part of a step; an exception ends that request, never the worker."""
        try:
            fn(request, *args)
        except Exception as e:
            request._finish("error", e)
            self._leave(request)

    def _admit(self, request: Request) -> None:
        """Give the request the next free row; its prompt goes in over the next steps (_prefill_some)."""
        if request.cancelled:
            return request._finish("cancelled")
        d = Decoding(request.prompt_ids, request.cfg, request.stop_ids, self.block, self.vocab, self.device)
        request.decoding = d
        self.active.append(request)
        self._start_prefill(request, len(self.active) - 1, d.history)

    def _start_prefill(self, request: Request, row: int, ids: list[int], refill: bool = False) -> None:
        """The row's cache is rebuilt from `ids` (a prompt, or a refill at the context end), chunk by chunk;
        until then the row sits out of the batch's forwards."""
        request._todo, request._done, request._refill = ids, 0, refill
        self.cache.pos[row] = 0

    def _prefill_some(self) -> None:
        """Prefill the rows still filling, prompts first, one batch-1 forward per chunk, up to a budget of
        ids per step: prefill_chunk while most rows decode, so a long prompt costs the running rows one
        chunk's time per step instead of a whole prefill; a chunk per step for each decoding row's share
        when more rows fill than decode; everything when no row decodes (nobody to stall). The last two
        matter when rows start or reach the context end together: 16 refills of 96 ids at 64 a step held
        the batch at a few productive rows for 24 steps (bench/serve.py: 2,610 vs 2,979 tokens/s)."""
        # New prompts before refills: a prompt's wait is its first token's, a refill's one row's next id.
        filling = sorted((r for r in self.active if r._todo), key=lambda r: r._refill)
        decoding = len(self.active) - len(filling)
        budget = self.prefill_chunk * -(-len(filling) // decoding) if decoding else sys.maxsize
        for request in filling:
            if request.cancelled:
                request._finish("cancelled")
                self._leave(request)
            elif budget > 0:
                n = min(budget, len(request._todo) - request._done)
                budget -= n
                self._guard(request, self._chunk, n)

    def _chunk(self, request: Request, n: int) -> None:
        """The next n ids of the row's prefill, by the scalar-position path of batch-1 generation."""
        row, done, todo = self.active.index(request), request._done, request._todo
        one = self.cache.rows(row, 1)
        one.pos = done  # an int: the batch-1 path, a causal mask over the chunk and every key before it
        ids = torch.tensor([todo[done : done + n]], device=self.device)
        logits, _ = self.model(ids, cache=one, logits_to_keep=1)  # (1, 1, vocab)
        self.cache.pos[row] = request._done = done + n
        if request._done < len(todo):
            return
        d, request._todo = request.decoding, []
        if request._refill:  # the newest id goes in with the batch's next forward, like any new id
            request._feed = d.history[-1]
        else:  # a prompt: the first pick comes from its last logits
            d.logits = logits[0, -1]

    def _step(self) -> None:
        """Pick one id per row that has logits, hand them out, then one forward of every row still going:
        rows still prefilling sit out (a dummy id whose cache slot their next chunk overwrites)."""
        positions = self.cache.pos[: len(self.active)].tolist()  # one read for all rows, not one per row
        ready = [
            (r, pos)
            for r, pos in zip(self.active, positions, strict=True)
            if r._feed is None and not r._todo and r.decoding.logits is not None
        ]
        self._pick_batch([r for r, _ in ready])
        for request, pos in ready:
            self._guard(request, self._pick, pos)
        for request, _ in ready:
            if request.finish_reason is not None:
                self._leave(request)
        self._flush()  # the consumers format this step's ids while the next forward runs
        feeds = [r._feed for r in self.active]
        n = next((i + 1 for i in range(len(feeds) - 1, -1, -1) if feeds[i] is not None), 0)
        if n == 0:
            return
        feeds = feeds[:n]  # new rows still filling sit at the end: the forward leaves them out
        try:
            logits = self._forward([0 if f is None else f for f in feeds])  # (n, vocab)
        except Exception as e:  # the batch failed as a whole: every row in it ends with the error
            for request in self.active[:n]:
                request._finish("error", e)
                self._leave(request)
            return
        rows = zip(self.active[:n], feeds, logits, strict=True)
        for row, (request, f, row_logits) in enumerate(rows):
            if f is None:
                self.cache.pos[row] -= 1  # the dummy id's slot is free again
            else:
                request.decoding.logits, request._feed = row_logits, None

    def _forward(self, ids: list[int]) -> torch.Tensor:
        """One forward of rows 0..len(ids)-1, an id each: their next logits (n, vocab). Compiled, the
        batch is padded to the next bucket with rows that are free or still filling: their dummy ids
        land at their positions, which a new request or the row's next chunk sets again."""
        n = len(ids)
        if self.compiled is None:
            tokens = torch.tensor([[i] for i in ids], device=self.device)  # (n, 1)
            logits, _ = self.model(tokens, cache=self.cache.rows(0, n))  # (n, 1, vocab)
            return logits[:, -1]
        size = next(b for b in self.buckets if b >= n)
        tokens = self._tokens[size]  # the same tensor at every step of this size: compiled._Replay
        tokens.copy_(torch.tensor([[i] for i in ids] + [[0]] * (size - n)))
        if size > n:  # a free padding row may have stopped at the context end
            self.cache.pos[n:size].clamp_(max=self.block - 1)
        return self.compiled(self.model, tokens, self.step_cache.view(size))[:n]

    def _warm_up(self) -> None:
        """Compile every bucket's graph on the empty cache (its dummy writes land in free rows)."""
        with torch.inference_mode():
            for size in self.buckets:
                self._forward([0] * size)
            self.cache.pos.zero_()

    def _pick(self, request: Request, pos: int) -> None:
        """The request's next id by the decode step (its row at `pos`); at the context end the row's cache
        is rebuilt first."""
        if request.cancelled:
            return request._finish("cancelled")
        d = request.decoding
        token = d.pick()
        logits, d.logits = d.logits, None
        if not d.accept(token):
            return request._finish("stop")
        k = request.top_logprobs
        request._push(token, None if k is None else token_logprobs(logits, token, k))
        if d.finish_reason is not None:
            return request._finish(d.finish_reason)
        refill = d.refill(pos)
        if refill is None:
            request._feed = token
        else:
            self._start_prefill(request, self.active.index(request), refill, refill=True)

    def _pick_batch(self, ready: list[Request]) -> None:
        """Draw the ids of all plain sampling rows together (decode.pick_together): same bits as alone."""
        going = [r.decoding for r in ready if not r.cancelled]
        try:
            pick_together(going)
        except Exception:  # e.g. one row's bad knob: each row picks alone and only that one fails
            for d in going:
                d.picked = None

    def _collect(self, wakers: list) -> None:
        for loop, wake in wakers:
            self._wakes.setdefault(loop, []).append(wake)

    def _flush(self) -> None:
        wakes, self._wakes = self._wakes, {}
        for loop, fns in wakes.items():
            _call_in(loop, fns)

    def _leave(self, request: Request) -> None:
        """Free the request's row: the last active row moves into it (its cache up to its position)."""
        if request not in self.active:
            return
        row, last = self.active.index(request), len(self.active) - 1
        if row != last:
            used = int(self.cache.pos[last])
            for k in (*self.cache.k, *self.cache.v):
                k[row, :, :used].copy_(k[last, :, :used])
            self.cache.pos[row] = used
            self.active[row] = self.active[last]
        self.active.pop()
