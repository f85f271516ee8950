"""The OpenAI API as the server speaks it: request bodies (pydantic), response and chunk objects (plain
dicts, built by the functions below) and the error shape. No model or engine here, so the wire format
reads in one place and the routes in app.py only fill it in.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

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
# Strict: "0.5" is not a temperature (JSON numbers only; ints are fine as floats).
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

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


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


def choice(i: int, text: str, reason: str | None, chat: bool) -> dict:
    if chat:
        message = {"role": "assistant", "content": text}
        return {"index": i, "message": message, "finish_reason": reason, "logprobs": None}
    return {"index": i, "text": text, "finish_reason": reason, "logprobs": None}


def response(head: dict, chat: bool, choices: list[dict], usage: dict) -> dict:
    obj = "chat.completion" if chat else "text_completion"
    return {**head, "object": obj, "choices": choices, "usage": usage}


# ---------------------------------------------------------------- streamed chunks (server-sent events)
DONE = "data: [DONE]\n\n"


def chunk_choice(i: int, text: str, reason: str | None, chat: bool) -> dict:
    if chat:
        return {
            "index": i,
            "delta": {"content": text} if text else {},
            "finish_reason": reason,
            "logprobs": None,
        }
    return {"index": i, "text": text, "finish_reason": reason, "logprobs": None}


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
