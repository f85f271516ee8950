"""`scratchlm serve`: an OpenAI-compatible HTTP API and a chat page over the batched engine.

Every request is tokenized here and handed to the engine's worker thread; the handlers only await the
tokens (Request.__aiter__), so the event loop never runs the model. Text comes out through
sample.TextStream, which holds back half a character and any tail that may grow into a stop string.

A base model (no SFT) answers /v1/completions only: /v1/chat/completions is a 400 that says so, because a
base model never saw the chat format and would answer a rendered conversation with noise, which an
OpenAI client could not tell from a real reply. The chat page switches to completion mode by itself.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import chat_template
from ..common import UserError
from ..config import SampleConfig
from ..sample import TextStream

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt a small context holds
MAX_N = 16


class APIError(Exception):
    """An OpenAI-shaped error: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param=None,
        code=None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.param, self.code), self.status, self.headers
        )


def error_body(message: str, type: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Request bodies. Strict: "0.5" is not a temperature (JSON numbers only; ints are fine as floats).
class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    """vLLM's spelling: keep only the prompt's last k tokens (and fit the context) instead of a 400."""

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop: at most 4 stop strings", param="stop")
        return [s for s in stops if s]


class CompletionBody(Sampling):
    prompt: str


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(Sampling):
    messages: list[Message] = Field(min_length=1)


def create_app(
    lm,
    model_name: str,
    *,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    max_tokens_limit: int = 2048,
    max_body_bytes: int = MAX_BODY_BYTES,
    engine=None,
) -> FastAPI:
    """The app over a loaded model (scratchlm.load). `engine` defaults to scratchlm.engine.Engine."""
    from ..engine import Engine, QueueFull

    if engine is None:
        engine = Engine(lm.model, max_batch=max_batch, max_queue=max_queue)
    tok, block = lm.tokenizer, lm.model.config.block_size
    is_chat = bool(lm.config.sft.base)
    created = int(time.time())
    chat_stops = set(chat_template.stop_ids(tok))

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def on_api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, e):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), e.status_code)

    @app.exception_handler(Exception)
    async def on_crash(request, e):  # one request's bug: a 500 for it, the server goes on
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), 500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not secrets.compare_digest(
            given[7:].encode(), api_key.encode()
        ):
            raise APIError(
                401,
                "missing or wrong API key: send the header Authorization: Bearer KEY",
                "invalid_request_error",
                code="invalid_api_key",
            )

    async def parse(request: Request, model: type[BaseModel]):
        check_key(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise APIError(413, f"the request body is over {max_body_bytes} bytes", code="body_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                raise APIError(413, f"the request body is over {max_body_bytes} bytes", code="body_too_large")
        try:
            body = model.model_validate_json(bytes(raw))
        except ValidationError as e:
            err = e.errors()[0]
            if err["type"] == "json_invalid":
                raise APIError(
                    400, f"the body is not valid JSON: {err['msg']}", code="invalid_json"
                ) from None
            param = ".".join(str(p) for p in err["loc"]) or None
            raise APIError(
                400, f"{param}: {err['msg']}" if param else err["msg"], param=param, code="invalid_value"
            ) from None
        if body.model != model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server has {model_name!r}",
                param="model",
                code="model_not_found",
            )
        if body.max_tokens is not None and body.max_tokens > max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens {body.max_tokens} is above this server's maximum of {max_tokens_limit}",
                param="max_tokens",
                code="invalid_value",
            )
        return body

    def fit(ids: list[int], body: Sampling) -> list[int]:
        """The prompt ids, left-truncated when the request asks; a 400 when they exceed the context."""
        if body.truncate_prompt_tokens is not None:
            ids = ids[-min(body.truncate_prompt_tokens, block) :]
        if len(ids) > block:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens, longer than the model's context of {block}; "
                "shorten it, or send truncate_prompt_tokens to keep only its last tokens",
                param="messages" if isinstance(body, ChatBody) else "prompt",
                code="context_length_exceeded",
            )
        return ids

    def submit(ids: list[int], body: Sampling, stop_ids: set[int]) -> list:
        """n engine requests; seeds seed, seed+1, … (so choice i is the solo run of its seed)."""
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        reqs = []
        for i in range(body.n):
            cfg = SampleConfig(
                max_new_tokens=body.max_tokens or lm.config.sample.max_new_tokens,
                temperature=body.temperature,
                top_k=0,
                top_p=body.top_p,
                seed=seed + i,
            )
            try:
                reqs.append(engine.submit(ids, cfg, stop_ids))
            except QueueFull:
                for r in reqs:
                    r.cancel()
                raise APIError(
                    429,
                    "too many requests are queued; retry in a moment",
                    "rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                ) from None
        return reqs

    async def pieces(req, stops: list[str]):
        """(text, finish_reason or None, tokens) as tokens arrive; the last item has the finish reason."""
        stream, n = TextStream(tok, stops), 0
        try:
            async for token in req:
                n += 1
                piece = stream.push(token)
                if stream.stopped:
                    req.cancel()
                    yield piece, "stop", n
                    return
                if piece:
                    yield piece, None, n
            yield stream.finish(), "length" if req.finish_reason == "length" else "stop", n
        finally:
            req.cancel()  # a no-op once finished; frees the slot when the client went away

    def usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def answer(request: Request, body: Sampling, ids: list[int], stop_ids: set[int], chat: bool):
        stops = body.stops()
        reqs = submit(ids, body, stop_ids)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "created": int(time.time()), "model": model_name}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream_events(reqs, stops, head, chat, len(ids), include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        task = asyncio.ensure_future(collect(reqs, stops))
        try:
            while not task.done():  # a client that hangs up cancels its requests
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    break
            results = await task
        finally:
            for r in reqs:
                r.cancel()
        choices = []
        for i, (text, reason) in enumerate(results[0]):
            if chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": reason,
                        "logprobs": None,
                    }
                )
            else:
                choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
        obj = "chat.completion" if chat else "text_completion"
        return {**head, "object": obj, "choices": choices, "usage": usage(len(ids), results[1])}

    async def collect(reqs, stops):
        out, total = [], 0
        for req in reqs:
            text, last = [], None
            async for last in pieces(req, stops):
                text.append(last[0])
            out.append(("".join(text), last[1]))
            total += last[2]
        return out, total

    async def stream_events(reqs, stops, head, chat, prompt_tokens, include_usage):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices, **extra) -> str:
            return f"data: {json.dumps({**head, 'object': obj, 'choices': choices, **extra})}\n\n"

        def choice(i, text, reason):
            if chat:
                return {
                    "index": i,
                    "delta": {"content": text} if text else {},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            return {"index": i, "text": text, "finish_reason": reason, "logprobs": None}

        total = 0
        try:
            for i, req in enumerate(reqs):
                if chat:
                    yield event(
                        [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                                "logprobs": None,
                            }
                        ]
                    )
                async for piece, reason, n in pieces(req, stops):
                    if piece and reason:  # the last text, then the finish reason on its own chunk
                        yield event([choice(i, piece, None)])
                    if piece or reason:
                        yield event([choice(i, "" if reason else piece, reason)])
                    total = total if reason is None else total + n
            if include_usage:
                yield event([], usage=usage(prompt_tokens, total))
        except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does
            err = error_body(f"internal error: {type(e).__name__}: {e}", "server_error")
            yield f"data: {json.dumps(err)}\n\n"
        finally:
            for r in reqs:
                r.cancel()
        yield "data: [DONE]\n\n"

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "chat": is_chat, "auth": api_key is not None}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "scratchlm",
                    "chat": is_chat,
                    "context_length": block,
                    "max_tokens": max_tokens_limit,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionBody)
        ids = fit([tok.bos_id] + tok.encode(body.prompt), body)
        return await answer(request, body, ids, {tok.eos_id}, False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatBody)
        if not is_chat:
            raise APIError(
                400,
                f"{model_name} is a base model (no SFT): it was never trained on the chat "
                "format; use /v1/completions, or serve a run made by `scratchlm sft`",
                param="model",
                code="model_not_chat",
            )
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            ids = chat_template.render(messages, tok, add_generation_prompt=True).ids
        except UserError as e:
            raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None
        return await answer(request, body, fit(ids, body), chat_stops, True)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a background thread for the block; yields its base URL.
    For notebooks, benchmarks and tests: `scratchlm serve` runs uvicorn in the foreground instead."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start within {timeout:g} s")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
