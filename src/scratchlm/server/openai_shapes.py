"""The OpenAI API as the server speaks it: request bodies (pydantic), response and chunk objects (plain
dicts, built by the functions below) and the error shape. No model or engine here, so the wire format
reads in one place and the routes in app.py only fill it in.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 16


def error_body(message: str, type: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


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


# ---------------------------------------------------------------- request bodies
# Strict: "0.5" is not a temperature (JSON numbers only; ints are fine as floats). null is every optional
# field's default, as OpenAI's API allows: a sampling knob left null takes the run's sample settings.
class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool | None = False


MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; legacy completions allow 5, we allow the same 20 there


def _off(value) -> bool:
    """An unsupported field sent empty, false or 0 asks for nothing: accepted, as OpenAI accepts it."""
    return value is None or value is False or value == 0 or value in ({}, [], "")


class Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    """vLLM's extra knobs (top_k, min_p, repetition_penalty), the ones `scratchlm sample` has."""
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    n: int | None = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    """vLLM's spelling: keep only the prompt's last k tokens (and fit the context) instead of a 400."""
    # What this server cannot do: typed Any so that any value parses, then refused by `refused` with the
    # field named, because a field accepted and ignored gives a client an answer it did not ask for.
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    REFUSED: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "logit_bias": _off,
        "presence_penalty": _off,
        "frequency_penalty": _off,
    }

    @model_validator(mode="after")
    def _null_is_default(self):
        self.n = 1 if self.n is None else self.n
        self.stream = bool(self.stream)
        return self

    def refused(self) -> str | None:
        """The first field set to something this server does not do (a 400 names it), else None."""
        return next((k for k, fine in self.REFUSED.items() if not fine(getattr(self, k))), None)

    def limit(self) -> tuple[int | None, str]:
        """The most tokens asked for and the field that asked (None: the run's max_new_tokens)."""
        return self.max_tokens, "max_tokens"

    def logprobs_count(self) -> int | None:
        """The engine's top_logprobs: None (no logprobs) or how many likeliest ids to report with each."""
        return None

    def stops(self, default: list[str] = ()) -> list[str]:
        """The stop strings; a request without `stop` uses `default` (the run's sample.stop)."""
        given = default if self.stop is None else self.stop
        stops = [given] if isinstance(given, str) else list(given)
        if len(stops) > 4 and self.stop is not None:
            raise APIError(400, "stop: at most 4 stop strings", param="stop")
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(Sampling):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Any = None
    best_of: Any = None
    suffix: Any = None
    REFUSED: ClassVar[dict[str, Callable[[Any], bool]]] = {
        **Sampling.REFUSED,
        "echo": _off,
        "best_of": lambda v: v is None or v == 1,
        "suffix": _off,
    }

    def logprobs_count(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    """"developer" is OpenAI's newer name for the system role (o1 and later); it is read as "system"."""
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_dict(self) -> dict[str, str]:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class ChatBody(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for max_tokens; when both are given, the smaller one holds."""
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    REFUSED: ClassVar[dict[str, Callable[[Any], bool]]] = {
        **Sampling.REFUSED,
        "tools": _off,
        "tool_choice": lambda v: v is None or v == "none",
        "functions": _off,
        "function_call": lambda v: v is None or v == "none",
        "response_format": lambda v: v is None or v == {"type": "text"},
        "audio": _off,
        "modalities": lambda v: v is None or v == ["text"],
        "prediction": _off,
    }

    def refused(self) -> str | None:
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs"  # OpenAI: top_logprobs needs logprobs true
        return super().refused()

    def limit(self) -> tuple[int | None, str]:
        given = [
            (v, k)
            for v, k in (
                (self.max_tokens, "max_tokens"),
                (self.max_completion_tokens, "max_completion_tokens"),
            )
            if v is not None
        ]
        return min(given) if given else (None, "max_tokens")

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# ---------------------------------------------------------------- responses
def model_list(name: str, created: int, chat: bool, context_length: int, max_tokens: int) -> dict:
    """GET /v1/models; "chat", "context_length" and "max_tokens" are ours: the chat page reads them."""
    model = {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "scratchlm",
        "chat": chat,
        "context_length": context_length,
        "max_tokens": max_tokens,
    }
    return {"object": "list", "data": [model]}


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def head(model: str, chat: bool) -> dict:
    """The fields every response and every chunk of one request share."""
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    return {"id": rid, "created": int(time.time()), "model": model}


def choice(i: int, text: str, reason: str | None, chat: bool, logprobs: dict | None = None) -> dict:
    if chat:
        message = {"role": "assistant", "content": text}
        return {"index": i, "message": message, "finish_reason": reason, "logprobs": logprobs}
    return {"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs}


# One generated token for logprobs: its text (decoded alone), log-probability, and the likeliest tokens'
# (text, log-probability), most likely first; plus its character offset in the completion's text.
TokenRow = tuple[str, float, list[tuple[str, float]], int]


def chat_logprobs(rows: list[TokenRow]) -> dict:
    """choices[].logprobs of a chat completion (or of one chunk: the tokens behind its text)."""

    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in top]} for t, lp, top, _ in rows]
    return {"content": content, "refusal": None}


def completion_logprobs(rows: list[TokenRow]) -> dict:
    """choices[].logprobs of a legacy completion; text_offset counts characters from the completion's
    start (there is no echo of the prompt)."""
    return {
        "tokens": [t for t, _, _, _ in rows],
        "token_logprobs": [lp for _, lp, _, _ in rows],
        "top_logprobs": [dict(top) for _, _, top, _ in rows],
        "text_offset": [offset for _, _, _, offset in rows],
    }


def logprobs(rows: list[TokenRow], chat: bool) -> dict:
    return chat_logprobs(rows) if chat else completion_logprobs(rows)


def response(head: dict, chat: bool, choices: list[dict], usage: dict) -> dict:
    obj = "chat.completion" if chat else "text_completion"
    return {**head, "object": obj, "choices": choices, "usage": usage}


# ---------------------------------------------------------------- streamed chunks (server-sent events)
DONE = "data: [DONE]\n\n"


def chunk_choice(i: int, text: str, reason: str | None, chat: bool, logprobs: dict | None = None) -> dict:
    if chat:
        return {
            "index": i,
            "delta": {"content": text} if text else {},
            "finish_reason": reason,
            "logprobs": logprobs,
        }
    return {"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs}


def role_choice(i: int) -> dict:
    """A chat choice's first chunk: the role, before any text, as OpenAI sends it."""
    return {
        "index": i,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": None,
        "logprobs": None,
    }


def event(head: dict, chat: bool, choices: list[dict], **extra) -> str:
    """One chunk as an SSE event; `extra` carries the last chunk's usage."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    return f"data: {json.dumps({**head, 'object': obj, 'choices': choices, **extra})}\n\n"


def error_event(message: str) -> str:
    """An error after the headers went out: it can only travel in the stream, as OpenAI sends it."""
    return f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"
