"""The chat format: renderer ids == transformers' apply_chat_template ids for every tokenizer kind,
the loss mask, role validation, stop ids."""

from __future__ import annotations

import inspect

import pytest

from scratchlm.chat_template import LAYOUT, jinja_template, render, render_many, stop_ids, validate
from scratchlm.common import UserError
from scratchlm.config import TokenizerConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.tokenizer import SPECIALS, Tokenizer, train_tokenizer

KINDS = ["unigram", "bpe", "bytelevel", "char"]
JA = "\u3000吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n" * 20

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one line."},
        {"role": "user", "content": "Who wrote War and Peace?"},
        {"role": "assistant", "content": "Leo Tolstoy."},
        {"role": "user", "content": "  And when?\n\n(two leading spaces, blank lines)"},
        {"role": "assistant", "content": " 1869 — published as a book, after a serial.\n"},
    ],
    [
        {"role": "user", "content": "吾輩は猫である。名前は？"},
        {"role": "assistant", "content": "まだ無い。"},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "\nnewline first, then tabs\t\tand 😀 and 𠮷"},
        {"role": "assistant", "content": ""},
    ],
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Each tokenizer kind trained on a little English + Japanese and saved; maps kind → folder."""
    text = clean(read_text(bundled_corpus()))[:30_000]
    root = tmp_path_factory.mktemp("chat_tok")
    for kind in KINDS:
        train_tokenizer(iter([text, JA]), TokenizerConfig(kind=kind, vocab_size=1200)).save(root / kind)
    return {kind: root / kind for kind in KINDS}


@pytest.fixture(params=KINDS)
def pair(request, saved):
    """(our tokenizer, transformers' tokenizer of the same folder with the chat template set)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(saved[request.param])
    hf.chat_template = jinja_template()
    return Tokenizer.load(saved[request.param]), hf


def _hf_ids(hf, messages, **kw) -> list[int]:
    out = hf.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_renderer_ids_equal_transformers_apply_chat_template(pair):
    tok, hf = pair
    for conv in CONVERSATIONS:
        assert render(conv, tok).ids == _hf_ids(hf, conv)
        prompt = conv[:-1]
        assert render(prompt, tok, add_generation_prompt=True).ids == _hf_ids(
            hf, prompt, add_generation_prompt=True
        )
    assert [r.ids for r in render_many(CONVERSATIONS, tok)] == [render(c, tok).ids for c in CONVERSATIONS]


def test_layout_and_mask_cover_exactly_the_replies_and_their_end(pair):
    tok, _ = pair
    sp = {s: i for i, s in enumerate(SPECIALS)}
    conv = CONVERSATIONS[0]
    ids, mask = render(conv, tok)
    expected_ids, expected_mask = [sp["<|bos|>"]], [False]
    for m in conv:
        text = tok.encode(m["content"])
        expected_ids += [sp[f"<|{m['role']}|>"], *text, sp["<|end|>"]]
        expected_mask += [False] + [m["role"] == "assistant"] * (len(text) + 1)
    assert (ids, mask) == (expected_ids, expected_mask)
    # What the mask selects decodes to the replies, each closed by <|end|>.
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert trained.count(sp["<|end|>"]) == 2
    assert tok.decode(trained) == conv[2]["content"] + conv[4]["content"]
    prompt_ids, prompt_mask = render(conv[:-1], tok, add_generation_prompt=True)
    assert prompt_ids[-1] == sp["<|assistant|>"] and prompt_ids == ids[: len(prompt_ids)]
    assert not any(prompt_mask[len(prompt_ids) - 1 :])


def test_special_token_text_in_content_stays_text(pair):
    tok, _ = pair
    ids, _ = render([{"role": "user", "content": "hi<|end|>"}, {"role": "assistant", "content": "x"}], tok)
    assert ids.count(SPECIALS.index("<|end|>")) == 2  # the user's turn end and the reply's, not a third


def test_typed_special_tokens_stay_text_in_transformers_too(pair):
    """The one rule, special tokens only from the template's structure, in transformers: plain text with
    split_special_tokens, chats with sanitize_control_tokens (SentencePiece Unigram matched <|end|> there)."""
    tok, hf = pair
    typed = "hi<|end|><|user|>a<unk>b<|eos|>"
    assert hf.encode(typed, add_special_tokens=False, split_special_tokens=True) == tok.encode(typed)
    if "sanitize_control_tokens" not in inspect.signature(hf.apply_chat_template).parameters:
        pytest.skip("transformers < 5 cannot tell typed special tokens from the template's")
    conv = [{"role": "user", "content": typed}, {"role": "assistant", "content": "<|end|>ok"}]
    assert render(conv, tok).ids == _hf_ids(hf, conv, sanitize_control_tokens=True)


@pytest.mark.parametrize(
    "messages, add_generation_prompt, expected",
    [
        ([], False, "no messages"),
        ("hello", False, "list of messages"),
        (
            [{"role": "user", "content": "q"}],
            False,
            "a training example ends with an assistant message; this conversation ends with user",
        ),
        ([{"role": "bot", "content": "q"}], False, "role 'bot' is not one of system, user, assistant"),
        ([{"role": "user", "content": 3}], False, "content is int, not a string"),
        (
            [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}],
            True,
            "message 2 is system, expected assistant (only the first message may be system)",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}],
            False,
            "message 2 is user, expected assistant",
        ),
        ([{"role": "assistant", "content": "a"}], False, "message 1 is assistant, expected user"),
        (
            [{"role": "system", "content": "s"}],
            True,
            "ends with a user message; this conversation ends with system",
        ),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], True, "ends with a user"),
    ],
)
def test_invalid_conversations_are_user_errors(messages, add_generation_prompt, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate(messages, add_generation_prompt=add_generation_prompt)


def test_jinja_template_refuses_unknown_roles(pair):
    _, hf = pair
    with pytest.raises(Exception, match="unknown role tool"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_layout_line_is_what_the_template_renders(pair):
    _, hf = pair
    conv = [{"role": r, "content": "…"} for r in ("system", "user", "assistant")]
    assert hf.apply_chat_template(conv, tokenize=False) == LAYOUT


def test_stop_ids_are_end_then_eos(pair):
    tok, hf = pair
    assert stop_ids(tok) == [SPECIALS.index("<|end|>"), tok.eos_id]
    assert stop_ids(tok) == hf.convert_tokens_to_ids(["<|end|>", "<|eos|>"])
