"""`scratchlm serve`: an OpenAI-compatible HTTP API and a chat page over the batched engine.

Every request is tokenized here and handed to the engine's worker thread; the handlers only await the
tokens (Request.__aiter__), so the event loop never runs the model. Text comes out through
decode.TextStream, which holds back half a character and any tail that may grow into a stop string.

A base model (no SFT) answers /v1/completions only: /v1/chat/completions is a 400 that says so, because a
base model never saw the chat format and would answer a rendered conversation with noise, which an
OpenAI client could not tell from a real reply. The chat page switches to completion mode by itself.

A request field the server cannot honour (tools, response_format json, logit_bias, ...) is a 400 naming
it, never silently ignored; a sampling knob left out or null takes the run's sample settings, as
`scratchlm sample` and `scratchlm chat` do. Logprobs are the engine's log-softmax of the raw logits.

Layout: the routes are plain functions over one AppState (on app.state, reached through the `State`
dependency). create_app registers every route of V1_ROUTES with the API key dependency (require_key), so
a new /v1/ route gets it by being listed there. The wire format (bodies, responses, chunks, errors) is
openai_shapes.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import chat_template
from ..common import UserError
from ..config import SampleConfig
from ..decode import TextStream, fit
from . import openai_shapes as shapes
from .openai_shapes import APIError, ChatBody, CompletionBody, Sampling

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt a small context holds


@dataclass(frozen=True)
class AppState:
    """What the routes share, built once by create_app."""

    lm: Any  # a LoadedModel (scratchlm.load)
    engine: Any  # scratchlm.engine.Engine, or a test's stand-in
    model_name: str
    api_key: str | None
    max_tokens_limit: int
    max_body_bytes: int
    created: int  # the server's start, reported as the model's creation time
    is_chat: bool  # an SFT run: only then is /v1/chat/completions served
    chat_stops: frozenset[int]  # chat_template.stop_ids: a reply ends at <|end|> or <|eos|>

    @property
    def tok(self):
        return self.lm.tokenizer

    @property
    def block(self) -> int:
        return self.lm.model.config.block_size


async def app_state(request: Request) -> AppState:  # async: a plain def would cost a threadpool hop per call
    return request.app.state.scratchlm


State = Annotated[AppState, Depends(app_state)]


async def require_key(request: Request, state: State) -> None:
    """The /v1/ routes' guard when the server has an API key (compared in constant time)."""
    if state.api_key is None:
        return
    scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
    # The scheme is case-insensitive (RFC 9110 section 11.1): "bearer KEY" is as good as "Bearer KEY".
    if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), state.api_key.encode()):
        raise APIError(
            401,
            "missing or wrong API key: send the header Authorization: Bearer KEY",
            "invalid_request_error",
            code="invalid_api_key",
        )


# ---------------------------------------------------------------- requests in
async def read_body(request: Request, state: AppState, model: type[BaseModel]):
    """The request body validated as `model`: 413 over the size limit, 400 for bad JSON or values,
    404 for another model's name, 400 for max_tokens above the server's limit."""
    limit = state.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body is over {limit} bytes", code="body_too_large")
    raw = bytearray()
    async for chunk in request.stream():  # a lying or absent content-length is caught here
        raw += chunk
        if len(raw) > limit:
            raise APIError(413, f"the request body is over {limit} bytes", code="body_too_large")
    try:
        body = model.model_validate_json(bytes(raw))
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            raise APIError(400, f"the body is not valid JSON: {err['msg']}", code="invalid_json") from None
        param = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(
            400, f"{param}: {err['msg']}" if param else err["msg"], param=param, code="invalid_value"
        ) from None
    if body.model != state.model_name:
        raise APIError(
            404,
            f"the model {body.model!r} does not exist; this server has {state.model_name!r}",
            param="model",
            code="model_not_found",
        )
    refused = body.refused()
    if refused:
        raise APIError(
            400,
            f"{refused}: this server does not support it (a small GPT with plain text replies); "
            "leave it out or null",
            param=refused,
            code="unsupported_parameter",
        )
    limit, field = body.limit()
    if limit is not None and limit > state.max_tokens_limit:
        raise APIError(
            400,
            f"{field} {limit} is above this server's maximum of {state.max_tokens_limit}",
            param=field,
            code="invalid_value",
        )
    return body


def fit_prompt(ids: list[int], body: Sampling, block: int) -> list[int]:
    """decode.fit, the one prompt-fitting rule: the last truncate_prompt_tokens ids when the request asks
    for them; otherwise a prompt past the context is a 400 rather than a silent cut."""
    fitted = fit(ids, block, keep_last=body.truncate_prompt_tokens)
    if fitted.dropped and body.truncate_prompt_tokens is None:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens, longer than the model's context of {block}; "
            "shorten it, or send truncate_prompt_tokens to keep only its last tokens",
            param="messages" if isinstance(body, ChatBody) else "prompt",
            code="context_length_exceeded",
        )
    return fitted.ids


KNOBS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def sample_config(state: AppState, body: Sampling, seed: int) -> SampleConfig:
    """The request's knobs over the run's sample settings (config.yaml), the ones `scratchlm sample` and
    `scratchlm chat` use: a request that leaves a knob out (or null) gets what the run's author chose."""
    run = state.lm.config.sample
    given = {k: getattr(body, k) for k in KNOBS if getattr(body, k) is not None}
    limit = body.limit()[0] or min(run.max_new_tokens, state.max_tokens_limit)
    return dataclasses.replace(run, **given, max_new_tokens=limit, stop=[], seed=seed)


def submit(state: AppState, ids: list[int], body: Sampling, stop_ids: set[int]) -> list:
    """n engine requests; seeds seed, seed+1, … (so choice i is the solo run of its seed)."""
    from ..engine import QueueFull

    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    reqs = []
    for i in range(body.n):
        cfg = sample_config(state, body, seed + i)
        try:
            reqs.append(state.engine.submit(ids, cfg, stop_ids, top_logprobs=body.logprobs_count()))
        except QueueFull:
            for r in reqs:  # all n or none: a half-answered request would hold slots for nothing
                r.cancel()
            raise APIError(
                429,
                "too many requests are queued; retry in a moment",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
    return reqs


# ---------------------------------------------------------------- answers out
def token_text(tok, i: int) -> str:
    """A token as text on its own; a special token (which decodes to nothing) by its name."""
    return tok.decode([i]) or tok.piece(i)


def logprob_rows(req, stream: TextStream, start: int, end: int) -> list[shapes.TokenRow]:
    """The logprobs of the request's tokens start..end-1 (empty when the request did not ask)."""
    tok, rows = stream.tokenizer, []
    for j, lp in enumerate(req.logprobs[start:end], start):
        top = [(token_text(tok, i), v) for i, v in lp.top]
        rows.append((token_text(tok, stream.ids[j]), lp.logprob, top, len(tok.decode(stream.ids[:j]))))
    return rows


async def pieces(req, tok, stops: list[str]):
    """(text, finish_reason or None, tokens, logprob rows) as tokens arrive; the last item has the finish
    reason. The logprob rows are those of the tokens since the previous item (the ones behind its text)."""
    stream, n, sent = TextStream(tok, stops), 0, 0
    try:
        async for token in req:
            n += 1
            piece = stream.push(token)
            if stream.stopped:
                req.cancel()
                yield piece, "stop", n, logprob_rows(req, stream, sent, n)
                return
            if piece:
                yield piece, None, n, logprob_rows(req, stream, sent, n)
                sent = n
        reason = "length" if req.finish_reason == "length" else "stop"
        yield stream.finish(), reason, n, logprob_rows(req, stream, sent, n)
    finally:
        req.cancel()  # a no-op once finished; frees the slot when the client went away


async def collect(reqs, tok, stops: list[str]) -> tuple[list[tuple[str, str, list]], int]:
    """Every choice's (text, finish_reason, logprob rows) and the completion tokens of them all."""
    out, total = [], 0
    for req in reqs:
        text, rows, last = [], [], None
        async for last in pieces(req, tok, stops):
            text.append(last[0])
            rows += last[3]
        out.append(("".join(text), last[1], rows))
        total += last[2]
    return out, total


async def stream_events(reqs, tok, stops, head: dict, chat: bool, prompt_tokens: int, include_usage: bool):
    """The SSE body: the choices one after another, each ending with its finish reason on a chunk of its
    own, then usage when asked, then [DONE]. A chunk's logprobs are those of the tokens behind its text."""
    total, wants_logprobs = 0, reqs[0].top_logprobs is not None
    try:
        for i, req in enumerate(reqs):
            if chat:
                yield shapes.event(head, chat, [shapes.role_choice(i)])
            async for piece, reason, n, rows in pieces(req, tok, stops):
                if piece or rows:  # the text (and its tokens), then the finish reason on its own chunk
                    lp = shapes.logprobs(rows, chat) if wants_logprobs else None
                    yield shapes.event(head, chat, [shapes.chunk_choice(i, piece, None, chat, lp)])
                if reason:
                    yield shapes.event(head, chat, [shapes.chunk_choice(i, "", reason, chat)])
                total = total if reason is None else total + n
        if include_usage:
            yield shapes.event(head, chat, [], usage=shapes.usage(prompt_tokens, total))
    except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does
        yield shapes.error_event(f"internal error: {type(e).__name__}: {e}")
    finally:
        for r in reqs:
            r.cancel()
    yield shapes.DONE


async def answer(request: Request, state: AppState, body: Sampling, ids: list[int], stop_ids, chat: bool):
    """Fit the prompt, run the n choices, and reply: one JSON object, or an SSE stream when asked."""
    ids = fit_prompt(ids, body, state.block)
    stops = body.stops(state.lm.config.sample.stop)
    reqs = submit(state, ids, body, stop_ids)
    head = shapes.head(state.model_name, chat)
    if body.stream:
        return StreamingResponse(
            stream_events(reqs, state.tok, stops, head, chat, len(ids), body.include_usage()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    task = asyncio.ensure_future(collect(reqs, state.tok, stops))
    try:
        while not task.done():  # a client that hangs up cancels its requests
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                break
        results, completion_tokens = await task
    finally:
        for r in reqs:
            r.cancel()
    wants_logprobs = body.logprobs_count() is not None
    choices = [
        shapes.choice(i, text, reason, chat, shapes.logprobs(rows, chat) if wants_logprobs else None)
        for i, (text, reason, rows) in enumerate(results)
    ]
    return shapes.response(head, chat, choices, shapes.usage(len(ids), completion_tokens))


# ---------------------------------------------------------------- routes
async def health(state: State):
    return {
        "status": "ok",
        "model": state.model_name,
        "chat": state.is_chat,
        "auth": state.api_key is not None,
    }


async def page():
    return FileResponse(STATIC / "index.html")


async def models(state: State):
    return shapes.model_list(
        state.model_name, state.created, state.is_chat, state.block, state.max_tokens_limit
    )


async def completions(request: Request, state: State):
    body = await read_body(request, state, CompletionBody)
    ids = [state.tok.bos_id] + state.tok.encode(body.prompt)
    return await answer(request, state, body, ids, {state.tok.eos_id}, chat=False)


async def chat_completions(request: Request, state: State):
    body = await read_body(request, state, ChatBody)
    if not state.is_chat:
        raise APIError(
            400,
            f"{state.model_name} is a base model (no SFT): it was never trained on the chat "
            "format; use /v1/completions, or serve a run made by `scratchlm sft`",
            param="model",
            code="model_not_chat",
        )
    messages = [m.as_dict() for m in body.messages]
    try:
        ids = chat_template.render(messages, state.tok, add_generation_prompt=True).ids
    except UserError as e:
        raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None
    return await answer(request, state, body, ids, set(state.chat_stops), chat=True)


# The OpenAI API, behind the key when the server has one. /health and the chat page are open: the page
# asks the user for the key and sends it with its /v1/ calls.
V1_ROUTES = (
    ("GET", "/v1/models", models),
    ("POST", "/v1/completions", completions),
    ("POST", "/v1/chat/completions", chat_completions),
)
OPEN_ROUTES = (("GET", "/health", health), ("GET", "/", page))


# ---------------------------------------------------------------- errors and lifetime
async def on_api_error(request: Request, e: APIError):
    return e.response()


async def on_http_error(request: Request, e: StarletteHTTPException):
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return JSONResponse(shapes.error_body(str(e.detail), kind), e.status_code)


async def on_crash(request: Request, e: Exception):  # one request's bug: a 500 for it, the server goes on
    return JSONResponse(shapes.error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), 500)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # The engine thread drops the GIL in every torch op and waits to get it back while the event loop
    # formats tokens; at Python's default 5 ms switch interval that wait is long. 0.5 ms while serving:
    # 16 streaming clients 2,359-2,442 vs 2,046-2,284 tokens/s (bench/serve.py, 4 alternating pairs,
    # 2026-12-05). The process's own interval comes back when the app stops.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0005))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        app.state.scratchlm.engine.close()


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
    compile: bool = False,
) -> FastAPI:
    """The app over a loaded model (scratchlm.load). `engine` defaults to scratchlm.engine.Engine (with
    `compile`, its batched step compiled)."""
    from ..engine import Engine

    if engine is None:
        engine = Engine(lm.model, max_batch=max_batch, max_queue=max_queue, compile=compile)
    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scratchlm = AppState(
        lm=lm,
        engine=engine,
        model_name=model_name,
        api_key=api_key,
        max_tokens_limit=max_tokens_limit,
        max_body_bytes=max_body_bytes,
        created=int(time.time()),
        is_chat=bool(lm.config.sft.base),
        chat_stops=frozenset(chat_template.stop_ids(lm.tokenizer)),
    )
    app.state.engine = engine
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)
    for method, path, route in OPEN_ROUTES:
        app.add_api_route(path, route, methods=[method], include_in_schema=path != "/")
    for method, path, route in V1_ROUTES:
        app.add_api_route(path, route, methods=[method], dependencies=[Depends(require_key)])
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
