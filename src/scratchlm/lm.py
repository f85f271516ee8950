"""A trained model in Python: `scratchlm.load(RUN)` → LoadedModel, with .generate(prompt) and .chat(messages).

    lm = scratchlm.load("runs/chat")
    r = lm.chat([{"role": "user", "content": "Hi"}], max_new_tokens=128, temperature=0.0)
    print(r.text, r.finish_reason, r.usage)

This module sits above the checkpoint (which only rebuilds the model, tokenizer and settings) and the
decoder (decode.py: ids, text, and the one prompt-fitting rule), so neither imports the other's caller.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import chat_template, decode
from .checkpoint import Restored
from .checkpoint import load as restore
from .common import UserError
from .config import SampleConfig
from .decode import TextStream, generate_ids, stream_text
from .model import GPT


@dataclass
class ChatReply:
    """One reply, shaped like an OpenAI chat choice and its usage."""

    text: str
    finish_reason: str | None
    """"stop": the model ended its turn (<|end|> or <|eos|>) or a stop string appeared; "length": it
    reached max_new_tokens; None while it is still streaming (or when the stream was abandoned)."""
    prompt_tokens: int
    completion_tokens: int = 0
    """The tokens generated, the <|end|> or <|eos|> that ended the reply included."""
    dropped: int = 0
    """The oldest messages left out so that the prompt fits the context (decode.fit)."""

    @property
    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


class ReplyStream:
    """The text pieces of one chat reply, as they are generated; `.reply` is the reply so far, with its
    finish_reason once the stream has ended. The prompt is the conversation's newest part that fits
    (`.messages`, the system message kept) rendered with <|assistant|> at the end (decode.fit); with
    fit=False, every message is rendered and the model reads those ids' newest end."""

    def __init__(self, lm: Restored, messages: Sequence[Mapping], cfg: SampleConfig, fit: bool = True):
        tok, block = lm.tokenizer, lm.model.config.block_size
        if fit:
            fitted = decode.fit(messages, block, cfg.max_new_tokens, tokenizer=tok)
        else:  # every message rendered; the model reads the rendered ids' newest block_size
            fitted = decode.fit(chat_template.render(messages, tok, add_generation_prompt=True).ids, block)
        self.messages = fitted.messages if fit else list(messages)
        self.prompt_ids = fitted.ids
        self.reply = ChatReply("", None, len(self.prompt_ids), dropped=fitted.dropped if fit else 0)
        self._pieces = self._generate(lm, cfg)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def _generate(self, lm: Restored, cfg: SampleConfig) -> Iterator[str]:
        reply, text = self.reply, TextStream(lm.tokenizer, cfg.stop)
        stops = set(chat_template.stop_ids(lm.tokenizer))
        for token in generate_ids(lm.model, self.prompt_ids, cfg, stops):
            reply.completion_tokens += 1
            piece = text.push(token)
            reply.text += piece
            if text.stopped:
                reply.finish_reason = "stop"
            if piece:
                yield piece
            if text.stopped:
                return
        piece = text.finish()
        reply.text += piece
        # generate_ids ends before max_new_tokens only at a stop id, which it does not yield.
        if reply.completion_tokens < cfg.max_new_tokens:
            reply.completion_tokens += 1
            reply.finish_reason = "stop"
        else:
            reply.finish_reason = "length"
        if piece:
            yield piece


@dataclass
class LoadedModel(Restored):
    """A trained model with its tokenizer and settings: what `scratchlm.load(RUN)` returns.

    Every method takes the sampling settings of SampleConfig as keywords (temperature, top_k, top_p, min_p,
    repetition_penalty, max_new_tokens, stop, seed); the rest come from the run's `sample` settings."""

    _warned_base: bool = field(default=False, init=False, repr=False, compare=False)
    """The base-model warning of chat was given (once per LoadedModel: a loop of calls warns once)."""

    @property
    def is_chat(self) -> bool:
        """Made by `scratchlm sft` (trained on the chat format), rather than a base model of plain text."""
        return self.config.sft.base != ""

    def sample_config(self, **overrides) -> SampleConfig:
        known = {f.name for f in dataclasses.fields(SampleConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown sampling setting {unknown[0]!r}; use {', '.join(sorted(known))}")
        return dataclasses.replace(self.config.sample, **overrides)

    def generate(self, prompt: str, **sample_overrides) -> str:
        """The continuation of the prompt (without it), e.g. generate("Prince", max_new_tokens=50)."""
        return "".join(stream_text(self, prompt, self.sample_config(**sample_overrides)))

    def chat_stream(self, messages: Sequence[Mapping], **sample_overrides) -> ReplyStream:
        """The next assistant reply as text pieces while they are generated (see ReplyStream)."""
        self._warn_if_base(stacklevel=3)
        return ReplyStream(self, messages, self.sample_config(**sample_overrides))

    def chat(self, messages: Sequence[Mapping], **sample_overrides) -> ChatReply:
        """The next assistant reply to `messages` (OpenAI's role/content dicts, ending with a user message).

        A conversation longer than the context loses its oldest exchanges (the system message stays);
        reply.dropped counts the messages left out. A base model (not `is_chat`) still answers, with a
        warning once: it never saw the chat format, so its replies are continuations of the rendered text."""
        self._warn_if_base(stacklevel=3)
        stream = self.chat_stream(messages, **sample_overrides)
        for _ in stream:
            pass
        return stream.reply

    def _warn_if_base(self, stacklevel: int) -> None:
        if self.is_chat or self._warned_base:
            return
        self._warned_base = True
        warnings.warn(
            "this run was not made by `scratchlm sft`: a base model never saw the chat format, so its "
            "replies are continuations of the rendered conversation, not answers; make a chat model with "
            "`scratchlm sft NEW --from RUN`, or use .generate(prompt) for plain continuations",
            UserWarning,
            stacklevel=stacklevel,
        )


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> LoadedModel:
    """The model of a run, from its "best" or "last" checkpoint or a .safetensors path, on `device`."""
    r = restore(run_dir, checkpoint, device)
    return LoadedModel(r.model, r.tokenizer, r.config, r.step)


def greedy_reply(model: GPT, tokenizer, messages: Sequence[Mapping], max_new_tokens: int) -> ChatReply:
    """The greedy reply of a bare model (a training step's, an evaluation's) to `messages`, in eval mode.
    A last question too long for a chat prompt is read from its end, as the model would see it, instead of
    being refused: the share of replies that end is measured on every validation prompt."""
    lm, cfg = (
        Restored(model, tokenizer, None, 0),
        SampleConfig(temperature=0.0, max_new_tokens=max_new_tokens),
    )
    was_training = model.training
    model.eval()
    try:
        try:
            stream = ReplyStream(lm, messages, cfg)
        except UserError:
            stream = ReplyStream(lm, messages, cfg, fit=False)
        for _ in stream:
            pass
        return stream.reply
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class EndCount:
    """How many greedy replies to a set of prompts ended on their own: what `end_rate` measures."""

    ended: int
    """Replies that emitted <|end|> (or <|eos|>) within the token limit and said something before it."""
    empty: int
    """Replies that ended before any visible text: counted as failures, not as replies that end."""
    total: int

    @property
    def rate(self) -> float | None:
        return self.ended / self.total if self.total else None

    def __str__(self) -> str:
        empty = "none empty" if not self.empty else f"{self.empty} empty (counted as not ending)"
        return f"{self.ended}/{self.total} ({self.rate:.0%}), {empty}" if self.total else "no prompts"


def count_replies_that_end(
    model: GPT, tokenizer, prompts: Sequence[Sequence[Mapping]], max_new_tokens: int
) -> EndCount:
    """Greedy replies to `prompts`, counted: those that end (<|end|> or <|eos|>) within max_new_tokens with
    some text before the end, and the empty ones. An SFT model that has learnt when to stop ends them all."""
    ended = empty = 0
    for messages in prompts:
        reply = greedy_reply(model, tokenizer, messages, max_new_tokens)
        if reply.finish_reason == "stop" and not reply.text.strip():
            empty += 1
        elif reply.finish_reason == "stop":
            ended += 1
    return EndCount(ended, empty, len(prompts))


def share_that_end(model: GPT, tokenizer, prompts: Sequence[Sequence[Mapping]], max_new_tokens: int) -> float:
    """Share of greedy replies to `prompts` that end, not empty, within max_new_tokens (see
    count_replies_that_end)."""
    return count_replies_that_end(model, tokenizer, prompts, max_new_tokens).rate or 0.0
