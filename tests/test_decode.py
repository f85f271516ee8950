"""The one prompt-fitting rule: every caller's model reads what decode.fit keeps."""

from __future__ import annotations

import pytest

import scratchlm
from scratchlm import chat_template
from scratchlm.common import UserError
from scratchlm.config import SampleConfig
from scratchlm.decode import fit, prompt_budget
from scratchlm.engine import Engine
from scratchlm.lm import greedy_reply

pytestmark = pytest.mark.usefixtures("one_thread")


class Prefills:
    """Records the ids of every multi-token forward (a prefill) the model runs, from any thread."""

    def __init__(self, model):
        self.seen: list[list[int]] = []
        self.handle = model.register_forward_pre_hook(self.record)

    def record(self, module, args):
        idx = args[0]
        if idx.shape[1] > 1:
            self.seen.extend(row.tolist() for row in idx)

    def take(self) -> list[list[int]]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture(scope="module")
def lm(trained_run_template):
    return scratchlm.load(trained_run_template)


def test_an_over_long_prompt_keeps_the_same_ids_through_sample_generate_chat_and_the_engine(lm):
    tok, block = lm.tokenizer, lm.model.config.block_size
    text = "The war and the peace of the Rostovs. " * 12
    ids = [tok.bos_id] + tok.encode(text)
    assert len(ids) > block + 1
    kept = fit(ids, block).ids
    assert kept == ids[-block:] and fit(ids, block).dropped == len(ids) - block
    one = SampleConfig(temperature=0.0, max_new_tokens=1)
    prefills = Prefills(lm.model)
    try:
        lm.generate(text, temperature=0.0, max_new_tokens=1)  # what `scratchlm sample` runs
        via_generate = prefills.take()
        with Engine(lm.model) as engine:  # the server's worker
            request = engine.submit(ids, one)
            list(request)
        via_engine = prefills.take()
        # A chat whose one question is longer than the context: greedy_reply (eval, SFT) reads its end.
        messages = [{"role": "user", "content": text}]
        with pytest.raises(UserError, match="the last message takes"):
            lm.chat(messages, max_new_tokens=1)
        greedy_reply(lm.model, tok, messages, 1)
        via_greedy_chat = prefills.take()
        with Engine(lm.model) as engine:
            list(engine.submit(chat_template.render(messages, tok, add_generation_prompt=True).ids, one))
        via_engine_chat = prefills.take()
    finally:
        prefills.handle.remove()
    assert via_generate == via_engine == [kept]
    assert request.prompt_tokens == block
    rendered = chat_template.render(messages, tok, add_generation_prompt=True).ids
    assert via_greedy_chat == via_engine_chat == [fit(rendered, block).ids] == [rendered[-block:]]


def test_a_long_conversation_drops_whole_old_turns_and_keeps_the_system_prompt(lm):
    tok, block = lm.tokenizer, lm.model.config.block_size
    system = {"role": "system", "content": "Be brief."}
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"Who is {i}?"},
            {"role": "assistant", "content": f"Pierre {i}."},
        ]
    messages = [system, *turns, {"role": "user", "content": "And Natasha?"}]
    fitted = fit(messages, block, 12, tokenizer=tok)
    assert fitted.messages[0] == system and fitted.messages[-1] == messages[-1] and fitted.dropped > 0
    assert fitted.messages[1:] == messages[1 + fitted.dropped :]
    assert fitted.ids == chat_template.render(fitted.messages, tok, add_generation_prompt=True).ids
    assert len(fitted.ids) <= prompt_budget(block, 12)
    prefills = Prefills(lm.model)
    try:
        reply = lm.chat(messages, temperature=0.0, max_new_tokens=12)
    finally:
        prefills.handle.remove()
    assert prefills.seen[0] == fitted.ids and reply.dropped == fitted.dropped
    assert reply.prompt_tokens == len(fitted.ids)


def test_keep_last_truncates_ids_as_the_server_asks():
    ids = list(range(100))
    assert fit(ids, 64, keep_last=10).ids == ids[-10:]
    assert fit(ids, 64, keep_last=10).dropped == 90
    assert fit(ids, 64, keep_last=500).ids == ids[-64:]  # never more than the context
    assert fit(ids[:30], 64).dropped == 0  # a prompt that fits is kept whole
