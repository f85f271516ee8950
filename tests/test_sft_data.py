"""SFT data: JSONL shapes → conversations, file:line errors, truncation, packing, exact resume."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from scratchlm.chat_template import render
from scratchlm.common import UserError
from scratchlm.config import TokenizerConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.data.sft import (
    IGNORE,
    PackedBatches,
    bundled_sft,
    encode_conversations,
    pack_rows,
    read_conversations,
    sequential_batches,
)
from scratchlm.tokenizer import train_tokenizer

from .conftest import shared_file


@pytest.fixture(scope="module")
def tok():
    text = clean(read_text(bundled_corpus()))[:30_000]
    return train_tokenizer(iter([text]), TokenizerConfig(kind="bytelevel", vocab_size=600))


def _jsonl(path, records) -> str:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records), "utf-8")
    return str(path)


def _pairs(conversations) -> list[tuple[str, ...]]:
    return [tuple(f"{m['role']}:{m['content']}" for m in c.messages) for c in conversations]


# ---------------------------------------------------------------- reading
def test_each_shape_is_detected_and_files_of_several_shapes_mix(tmp_path):
    files = [
        _jsonl(
            tmp_path / "messages.jsonl",
            [
                {
                    "messages": [
                        {"role": "system", "content": "S"},
                        {"role": "user", "content": "u"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ],
        ),
        _jsonl(
            tmp_path / "alpaca.jsonl",
            [
                {"instruction": "Add.", "input": "2 + 2", "output": "4"},
                "\n",
                {"instruction": "Hi.", "output": "Hello."},
            ],
        ),
        _jsonl(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}]),
        _jsonl(
            tmp_path / "si.jsonl",
            [
                {
                    "instruction": "Sort.",
                    "instances": [{"input": "b a", "output": "a b"}, {"input": "", "output": "?"}],
                }
            ],
        ),
    ]
    convs = read_conversations(files)
    assert _pairs(convs) == [
        ("system:S", "user:u", "assistant:a"),
        ("user:Add.\n\n2 + 2", "assistant:4"),
        ("user:Hi.", "assistant:Hello."),
        ("user:p", "assistant:c"),
        ("user:Sort.\n\nb a", "assistant:a b"),
        ("user:Sort.", "assistant:?"),
    ]
    assert [c.source for c in convs][:3] == [f"{files[0]}:1", f"{files[1]}:1", f"{files[1]}:3"]


def test_bundled_self_instruct_set_reads_gzipped():
    convs = read_conversations([bundled_sft()])
    assert len(convs) == 175 and all(len(c.messages) == 2 for c in convs)
    with gzip.open(bundled_sft(), "rt", encoding="utf-8") as f:
        second = json.loads(f.readlines()[1])
    inst = second["instances"][0]
    assert _pairs(convs[1:2]) == [
        (f"user:{second['instruction']}\n\n{inst['input']}", f"assistant:{inst['output']}")
    ]


def test_field_mapping_and_a_forced_shape(tmp_path):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A.", "id": 1}])
    alpaca = _jsonl(tmp_path / "a.jsonl", [{"instruction": "I", "output": "O"}])
    convs = read_conversations(
        [qa, alpaca], prompt_field="question", response_field="answer", system_prompt="Be brief."
    )
    assert _pairs(convs) == [
        ("system:Be brief.", "user:Q?", "assistant:A."),
        ("system:Be brief.", "user:I", "assistant:O"),
    ]
    with pytest.raises(
        UserError, match=r"qa.jsonl:1: cannot tell the shape .*'question', 'answer', 'id'.*prompt_field"
    ):
        read_conversations([qa])
    with pytest.raises(UserError, match="go together"):
        read_conversations([qa], prompt_field="question")
    with pytest.raises(UserError, match=r"a.jsonl:1: no 'prompt' field \(a prompt_completion line\)"):
        read_conversations([alpaca], shape="prompt_completion")
    with pytest.raises(UserError, match="--sft.shape 'sharegpt': choose one of"):
        read_conversations([alpaca], shape="sharegpt")


def test_gsm8k_loads_with_the_question_answer_mapping():
    path = shared_file("gsm8k_train.jsonl")
    convs = read_conversations([path], prompt_field="question", response_field="answer")
    assert len(convs) == 7473
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert convs[0].messages == [
        {"role": "user", "content": first["question"]},
        {"role": "assistant", "content": first["answer"]},
    ]


@pytest.mark.parametrize(
    "lines, expected",
    [
        (
            ['{"prompt": "p", "completion": "c"}\n', '{"prompt": "p", "completion": \n'],
            r"f.jsonl:2: not valid JSON",
        ),
        (
            ['{"prompt": "p", "completion": "c"}\n', "\n", '{"prompt": "p"}\n'],
            r"f.jsonl:3: no 'completion' field",
        ),
        (['{"instruction": "i", "output": 7}\n'], r"f.jsonl:1: field 'output' is int, not a string"),
        (["[1, 2]\n"], r"f.jsonl:1: a line must be a JSON object, not list"),
        (['{"messages": "hi"}\n'], r"f.jsonl:1: 'messages' is str, expected a list"),
        (
            ['{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}\n'],
            r"f.jsonl:1: message 2 is user, expected assistant",
        ),
        (
            ['{"messages": [{"role": "user", "content": "q"}]}\n'],
            r"f.jsonl:1: a training example ends with an",
        ),
        (
            ['{"instruction": "i", "instances": [{"input": "x"}]}\n'],
            r"f.jsonl:1 \(instance 1\): no 'output' field",
        ),
        (["\n", "  \n"], r"f.jsonl: no examples in this file"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, lines, expected):
    path = tmp_path / "f.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match=expected):
        read_conversations([path])


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        read_conversations([tmp_path / "missing.jsonl"])
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "p", "completion": "c"}\n{"prompt": "caf\xe9", "completion": "c"}\n')
    with pytest.raises(UserError, match="latin1.jsonl:2: not UTF-8 text"):
        read_conversations([bad])


# ---------------------------------------------------------------- truncation and packing
def _conv(user: str, reply: str):
    from scratchlm.data.sft import Conversation

    return Conversation([{"role": "user", "content": user}, {"role": "assistant", "content": reply}], "t:1")


def test_truncation_cuts_the_prompt_side_and_keeps_the_reply_whole(tok):
    long_prompt = _conv("Tell me about the war. " * 40, "Napoleon invaded Russia in 1812.")
    huge_reply = _conv("Q", "word " * 200)
    short = _conv("Hi", "Hello.")
    ex = encode_conversations([long_prompt, huge_reply, short], tok, block_size=48)
    s = ex.stats
    assert (s.conversations, s.kept, s.truncated, s.skipped) == (3, 2, 1, 1)
    full, full_mask = render(long_prompt.messages, tok)
    ids, mask = ex.get(0)
    assert len(ids) == 49 and ids.tolist() == full[-49:] and mask.tolist() == full_mask[-49:]
    reply = tok.encode("Napoleon invaded Russia in 1812.")
    assert int(mask.sum()) == len(reply) + 1  # the whole reply and its <|end|>
    assert tok.decode(ids[mask].tolist()) == "Napoleon invaded Russia in 1812."
    assert s.tokens == 49 + len(render(short.messages, tok).ids)
    with pytest.raises(
        UserError, match="every one of the 1 conversations has a last reply longer than the context"
    ):
        encode_conversations([huge_reply], tok, block_size=48)


@pytest.fixture(scope="module")
def examples(tok):
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat while Pierre and Natasha spoke of Moscow".split()
    convs = [
        _conv(
            " ".join(rng.choice(words, rng.integers(1, 7))), " ".join(rng.choice(words, rng.integers(1, 5)))
        )
        for _ in range(60)
    ]
    return encode_conversations(convs, tok, block_size=64)


def test_packing_places_every_conversation_once_and_fills_rows(examples):
    order = np.random.default_rng(1).permutation(len(examples))
    rows = pack_rows(examples.lengths, order, 65)
    assert sorted(i for row in rows for i in row) == list(range(len(examples)))
    assert all(sum(examples.lengths[i] for i in row) <= 65 for row in rows)
    assert examples.lengths.sum() / (len(rows) * 65) > 0.85


def test_batches_train_on_replies_only(examples, tok):
    batches = PackedBatches(examples, batch_size=4, block_size=64, seed=0)
    x, y = batches.next_batch()
    assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.long
    scored = y != IGNORE
    assert scored.any() and torch.equal(y[:, :-1][scored[:, :-1]], x[:, 1:][scored[:, :-1]])  # next tokens
    end, assistant = tok.special_ids["<|end|>"], tok.special_ids["<|assistant|>"]
    assert not (y == assistant).any() and (y == end).sum() > 0
    # Every scored target is part of a reply: the text between an <|assistant|> and its <|end|>.
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        in_reply = False
        for t, (xi, yi) in enumerate(zip(row_x, row_y, strict=True)):
            in_reply = (in_reply or xi == assistant) and not (t and row_x[t] == end)
            assert (yi != IGNORE) == in_reply, (t, row_x, row_y)


def test_resume_gives_identical_batches_across_an_epoch_boundary(examples):
    a = PackedBatches(examples, batch_size=4, block_size=64, seed=7)
    per_epoch = a.rows_per_epoch()
    for _ in range(per_epoch // 4 - 1):  # stop just before the epoch ends
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # survives the checkpoint's serialization
    expected = [a.next_batch() for _ in range(per_epoch // 4 + 2)]
    assert a.epoch >= 1
    b = PackedBatches(examples, batch_size=4, block_size=64, seed=0)
    b.load_state_dict(state)
    for x, y in expected:
        bx, by = b.next_batch()
        assert torch.equal(bx, x) and torch.equal(by, y)
    assert b.state_dict() == a.state_dict()
    assert b._epoch_rows(1) != b._epoch_rows(0)  # each epoch has its own order


def test_resume_with_other_data_is_refused(examples, tok):
    state = PackedBatches(examples, 4, 64, seed=0).state_dict()
    other = encode_conversations([_conv("a", "b")], tok, block_size=64)
    with pytest.raises(UserError, match="SFT data or tokenizer changed"):
        PackedBatches(other, 4, 64, seed=0).load_state_dict(state)


def test_sequential_batches_score_each_reply_once(examples):
    scored = sum(int((y != IGNORE).sum()) for _, y in sequential_batches(examples, 4, 64))
    assert scored == int(examples.trained.sum())


def test_model_loss_ignores_the_masked_targets(examples, one_thread):
    from scratchlm.config import ModelConfig
    from scratchlm.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=600, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    x, y = PackedBatches(examples, 2, 64, seed=0).next_batch()
    logits, loss = model(x, y)
    keep = y != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[keep].float(), y[keep])
    torch.testing.assert_close(loss, expected)


def test_the_held_out_split_is_fixed_by_the_seed_and_never_trained_on(tmp_path):
    """What `eval` reports its end rate on: the same held-out conversations every time for a seed, none of
    them (nor their instruction: the seed tasks have one conversation each) among the training ones."""
    from scratchlm.config import RunConfig
    from scratchlm.data.sft import describe_held_out, split_conversations

    cfg = RunConfig()
    cfg.sft.val_fraction = 0.18
    train, val = split_conversations(cfg, tmp_path)
    again = split_conversations(cfg, tmp_path)[1]
    assert (len(train), len(val)) == (143, 32) and [c.source for c in val] == [c.source for c in again]
    prompts = {c.messages[0]["content"] for c in train}
    assert not any(c.messages[0]["content"] in prompts for c in val)
    assert describe_held_out(cfg, train, val) == (
        "the 32 of 175 conversations held out, never trained on (--sft.val-fraction 0.18, shuffled by "
        "--train.seed 1337)"
    )
    cfg.train.seed = 7
    assert [c.source for c in split_conversations(cfg, tmp_path)[1]] != [c.source for c in val]
