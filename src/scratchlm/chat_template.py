"""The one chat format: a conversation → ids + loss mask, and the same layout as a Jinja chat template.

Layout, with no text of its own between the special tokens (ids 0..6 of every tokenizer kind):

    <|bos|><|system|>SYSTEM<|end|><|user|>USER<|end|><|assistant|>REPLY<|end|><|user|>…

Why this layout:
- <|bos|> once at the start, as every pretraining document starts (`<|bos|> doc <|eos|>`), so a chat
  continues the way every text the base model saw began.
- No newline or space after the role tokens: the specials already delimit the turns, a newline would
  cost a token per turn of a small context, and every tokenizer kind encodes without a dummy prefix, so
  content is encoded exactly as written, with its own leading spaces. Transformers splits the rendered
  string at special tokens before encoding the text between them, which is what `render` does, so both
  give the same ids (tested for every kind).
- <|end|> closes every turn, the assistant's included: it is the stop token of a reply, and a model
  trained to emit it stops without a stop string. <|eos|> stays the end of a plain document; both are
  stop ids (`stop_ids`).
- The loss covers what the model must produce: each assistant reply and its <|end|>, never the
  <|assistant|> tag, which the prompt supplies at inference (add_generation_prompt).

The rule for special tokens: they come only from this layout, never from content. A message that spells
"<|end|>" keeps it as text, so typed text cannot end a turn or forge one (prompt injection). Every string
path of the ecosystem renders the template to text and then cannot tell the template's "<|end|>" from a
typed one, so it follows the rule only where told which text is typed:
- transformers: `apply_chat_template(..., sanitize_control_tokens=True)` (transformers 5) gives `render`'s
  ids, and `tokenizer(text, split_special_tokens=True)` gives `encode(text)` (tested for every kind; a
  SentencePiece Unigram tokenizer.json needs a cut before "<|" for it, see sentencepiece.py). Without those
  flags transformers turns the typed text into the special id, as `encode(..., allow_special=True)` does.
- llama.cpp: tokenizing without parse_special keeps it text (tested); its chat path (llama-server,
  llama-cpp-python's create_chat_completion) parses special tokens in the whole rendered prompt, so a typed
  "<|end|>" ends the turn there. A GGUF has no way to ask otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .common import UserError

ROLES = ("system", "user", "assistant")
BOS, END = "<|bos|>", "<|end|>"
EOS = "<|eos|>"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
# The layout in one line, for model cards and help texts (tested against the template).
LAYOUT = "<|bos|><|system|>…<|end|><|user|>…<|end|><|assistant|>…<|end|>"

# For tokenizer_config.json, Hugging Face exports and GGUF (llama.cpp's Jinja engine reads the same
# subset). Whitespace-free so trim_blocks/lstrip_blocks settings cannot change the output; an unknown
# role raises rather than render as text. Validation of the order of roles is `render`'s.
CHAT_TEMPLATE = (
    "{{ '" + BOS + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + ': use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ROLE_TOKENS["assistant"] + "' }}{% endif %}"
)


class Rendered(NamedTuple):
    ids: list[int]
    mask: list[bool]
    """True where the model is trained to predict the token: assistant content and its <|end|>."""


def jinja_template() -> str:
    """The `chat_template` string for tokenizer_config.json, HF exports and GGUF."""
    return CHAT_TEMPLATE


def stop_ids(tokenizer) -> list[int]:
    """Ids that end a reply: <|end|> (end of turn, GGUF's eot) then <|eos|> (end of a document)."""
    specials = tokenizer.special_ids
    return [specials[END], specials[EOS]]


def validate(messages: Sequence[Mapping], *, add_generation_prompt: bool = False) -> None:
    """Raise UserError unless `messages` is a conversation `render` accepts.

    An optional system message first, then user and assistant alternating from user. A training
    conversation (add_generation_prompt False) ends with the assistant, a prompt with the user.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise UserError(f"a conversation is a list of messages, not {type(messages).__name__}")
    if not messages:
        raise UserError("the conversation has no messages")
    for n, m in enumerate(messages, 1):
        if not isinstance(m, Mapping):
            raise UserError(f"message {n} is {type(m).__name__}, not an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserError(f"message {n}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"message {n} ({role}): content is {type(content).__name__}, not a string")
    first = 1 if messages[0]["role"] == "system" else 0
    for n, m in enumerate(messages[first:], first + 1):
        expected = ("user", "assistant")[(n - first - 1) % 2]
        if m["role"] != expected:
            why = (
                "only the first message may be system"
                if m["role"] == "system"
                else "user first, then alternate"
            )
            raise UserError(f"message {n} is {m['role']}, expected {expected} ({why})")
    last = "user" if add_generation_prompt else "assistant"
    if len(messages) == first or messages[-1]["role"] != last:
        what = (
            "a prompt (add_generation_prompt) ends with a user"
            if add_generation_prompt
            else "a training example ends with an assistant"
        )
        raise UserError(f"{what} message; this conversation ends with {messages[-1]['role']}")


def render(messages: Sequence[Mapping], tokenizer, *, add_generation_prompt: bool = False) -> Rendered:
    """A validated conversation → ids and loss mask; with add_generation_prompt, ends with <|assistant|>.

    The ids are those of transformers' apply_chat_template with `jinja_template()`; for content that
    spells a special token, with sanitize_control_tokens=True (see the module docstring).
    """
    validate(messages, add_generation_prompt=add_generation_prompt)
    texts = [tokenizer.encode(m["content"]) for m in messages]
    return _assemble(messages, texts, tokenizer.special_ids, add_generation_prompt)


def render_many(conversations: Sequence[Sequence[Mapping]], tokenizer) -> list[Rendered]:
    """`render` of many training conversations, their texts encoded in one batch on all cores."""
    for c in conversations:
        validate(c)
    texts = iter(tokenizer.encode_batch([m["content"] for c in conversations for m in c]))
    specials = tokenizer.special_ids
    return [_assemble(c, [next(texts) for _ in c], specials, False) for c in conversations]


def _assemble(messages, texts, specials: dict[str, int], add_generation_prompt: bool) -> Rendered:
    end = specials[END]
    ids, mask = [specials[BOS]], [False]
    for m, text in zip(messages, texts, strict=True):
        ids.append(specials[ROLE_TOKENS[m["role"]]])
        ids.extend(text)
        ids.append(end)
        mask.append(False)
        mask.extend([m["role"] == "assistant"] * (len(text) + 1))
    if add_generation_prompt:
        ids.append(specials[ROLE_TOKENS["assistant"]])
        mask.append(False)
    return Rendered(ids, mask)


def fit_prompt(messages: Sequence[Mapping], tokenizer, max_tokens: int) -> tuple[list[Mapping], int]:
    """The newest part of a prompt conversation whose `render` (add_generation_prompt) takes at most
    `max_tokens` ids, and how many messages were left out.

    The oldest user + assistant exchanges go first, whole, so what stays still starts with a user; the
    system message always stays. UserError when the system message and the last user message alone are
    too long: cutting into a message would change what was asked. The chat layout's part of the one
    prompt-fitting rule, `decode.fit`, which every caller goes through (it sets `max_tokens`).
    """
    validate(messages, add_generation_prompt=True)
    first = 1 if messages[0]["role"] == "system" else 0
    # render's layout: <|bos|>, then <|role|> content <|end|> per message, then <|assistant|>.
    cost = [len(tokenizer.encode(m["content"])) + 2 for m in messages]
    total, start = 2 + sum(cost), first
    while total > max_tokens and len(messages) - start > 1:
        total -= cost[start] + cost[start + 1]
        start += 2
    if total > max_tokens:
        what = "the system prompt and the last message take" if first else "the last message takes"
        raise UserError(
            f"{what} {total} tokens, more than the {max_tokens} of the model's context a prompt may use; "
            "shorten it"
        )
    return list(messages[:first]) + list(messages[start:]), start - first
