"""A stand-in for scratchlm.engine.Engine with its interface, for the server tests until the batched engine
lands: one worker thread runs sample.generate_ids for one request at a time and feeds each request's tokens
to its readers (a thread via __iter__, the event loop via __aiter__ without blocking it)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from scratchlm.config import SampleConfig
from scratchlm.sample import generate_ids


class QueueFull(Exception):
    pass


class Request:
    def __init__(self, prompt_ids: list[int], cfg: SampleConfig, stop_ids: set[int]):
        self.prompt_ids, self.cfg, self.stop_ids = list(prompt_ids), cfg, set(stop_ids)
        self.prompt_tokens, self.completion_tokens = len(prompt_ids), 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._tokens: list[int] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._cancelled = False

    def _push(self, token: int | None) -> None:
        """One more token, or None at the end; wakes every reader."""
        with self._cond:
            if token is not None:
                self._tokens.append(token)
                self.completion_tokens += 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(None))

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            with self._cond:
                while i >= len(self._tokens) and self.finish_reason is None:
                    self._cond.wait()
                if i >= len(self._tokens):
                    break
                token = self._tokens[i]
            i += 1
            yield token
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[int]:
        i = 0
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if i < len(self._tokens):
                    token = self._tokens[i]
                elif self.finish_reason is not None:
                    break
                else:
                    fut = loop.create_future()
                    self._waiters.append((loop, fut))
                    token = None
            if token is None:
                await fut
                continue
            i += 1
            yield token
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self._cancelled = True


class Engine:
    def __init__(self, model, max_batch: int = 16, max_queue: int = 64):
        self.model = model
        self._queue: queue.Queue[Request | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, daemon=True, name="standin-engine")
        self._thread.start()

    def submit(self, prompt_ids: list[int], cfg: SampleConfig, stop_ids: set[int] = frozenset()) -> Request:
        req = Request(prompt_ids, cfg, stop_ids)
        try:
            self._queue.put_nowait(req)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are waiting already") from None
        return req

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while (req := self._queue.get()) is not None:
            reason, n = "length", 0
            try:
                for token in generate_ids(self.model, req.prompt_ids, req.cfg, req.stop_ids):
                    if req._cancelled:
                        reason = "cancelled"
                        break
                    req._push(token)
                    n += 1
                else:
                    reason = "length" if n == req.cfg.max_new_tokens else "stop"
            except Exception as e:  # handed to the reader, as the real engine fails one request only
                req.error = e
            req.finish_reason = reason
            req._push(None)
