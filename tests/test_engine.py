"""The batched engine: per-row KV cache positions, and requests that decode together as they would alone."""

from __future__ import annotations

import asyncio
import copy
import dataclasses

import pytest
import torch

import scratchlm
import scratchlm.compiled
import scratchlm.decode as engine_mod  # the engine picks by decode.py's step
from scratchlm.config import ModelConfig, SampleConfig
from scratchlm.decode import generate_ids
from scratchlm.engine import Engine, QueueFull
from scratchlm.model import GPT, KVCache

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(trained_run_template):
    return scratchlm.load(trained_run_template).model


def configs(n: int) -> list[SampleConfig]:
    """Greedy and sampled requests with every knob, different seeds and lengths."""
    return [
        SampleConfig(
            max_new_tokens=10 + 7 * i,
            temperature=0.0 if i % 4 == 0 else 0.7 + 0.05 * i,
            top_k=[0, 20, 50][i % 3],
            top_p=[1.0, 0.9][i % 2],
            min_p=[0.0, 0.05][i % 5 == 1],
            repetition_penalty=[1.0, 1.3][i % 3 == 2],
            seed=i,
        )
        for i in range(n)
    ]


def prompts(n: int) -> list[list[int]]:
    return [[1, *range(10 + i, 10 + i + 3 * i)] for i in range(n)]  # 1 to 46 tokens


def alone(model, prompt, cfg, stop_ids=frozenset()) -> list[int]:
    return list(generate_ids(model, prompt, cfg, stop_ids))


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_rows_at_different_positions_decode_as_each_row_alone(flavour):
    torch.manual_seed(0)
    cfg = ModelConfig(flavour=flavour, vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=32)
    model = GPT(cfg).eval()
    lens = [3, 9, 1, 6]
    seqs = [torch.randint(0, 100, (n + 4,)).tolist() for n in lens]
    cache = KVCache.empty(cfg, len(lens), 32, "cpu", torch.float32)
    with torch.no_grad():
        for b, n in enumerate(lens):  # each prompt prefilled alone into its row (the scalar-position path)
            row = cache.rows(b, 1)
            row.pos = 0
            model(torch.tensor([seqs[b][:n]]), cache=row)
        cache.pos = torch.tensor(lens)
        new = [s[n:] for s, n in zip(seqs, lens, strict=True)]  # 4 new tokens per row
        out = [model(torch.tensor([s[:2] for s in new]), cache=cache)[0]]  # two at once, then one by one
        for t in (2, 3):
            out.append(model(torch.tensor([[s[t]] for s in new]), cache=cache)[0])
        got = torch.cat(out, dim=1)  # (4 rows, 4 new tokens, vocab)
        for b, n in enumerate(lens):
            torch.testing.assert_close(got[b], model(torch.tensor([seqs[b]]))[0][0, n : n + 4])
    assert cache.pos.tolist() == [n + 4 for n in lens]


def test_16_concurrent_requests_each_equal_their_solo_run(model):
    cfgs, ps = configs(16), prompts(16)
    with Engine(model, max_batch=16) as engine:
        solo = [list(engine.submit(p, c)) for p, c in zip(ps, cfgs, strict=True)]
        requests = [engine.submit(p, c) for p, c in zip(ps, cfgs, strict=True)]
        together = [list(r) for r in requests]
    assert together == solo
    assert solo == [alone(model, p, c) for p, c in zip(ps, cfgs, strict=True)]  # == the CLI's sampler
    assert [r.finish_reason for r in requests] == ["length"] * 16
    assert [r.completion_tokens for r in requests] == [c.max_new_tokens for c in cfgs]
    assert [r.prompt_tokens for r in requests] == [len(p) for p in ps]


@pytest.mark.parametrize("span", [None, 8], ids=["whole-cache", "filled-part"])
def test_the_compiled_engine_gives_the_eager_engines_ids(model, span, monkeypatch):
    """serve --compile: the batch's forward as compiled graphs at 1, 2, 4, 8 and 16 rows, the rows padded
    up to the next size. 16 requests that prefill in chunks, refill past the context end and leave at
    different steps get the eager engine's ids, and so does one alone (float64: no near tie can flip on
    the two paths' rounding). filled-part: attention over the positions up to the furthest row's, in
    spans of 8, as for contexts of 512 and more (the padding rows' positions included)."""
    if span:
        monkeypatch.setattr(scratchlm.compiled, "_PREFIX_MIN", 0)
        monkeypatch.setattr(scratchlm.compiled, "_SPAN", span)
    m = copy.deepcopy(model).double()
    cfgs, ps = configs(16), prompts(16)
    assert max(len(p) + c.max_new_tokens for p, c in zip(ps, cfgs, strict=True)) > 2 * m.config.block_size
    got = {}
    for compile in (False, True):
        with Engine(m, max_batch=16, prefill_chunk=16, compile=compile) as engine:
            requests = [engine.submit(p, c) for p, c in zip(ps, cfgs, strict=True)]
            got[compile] = [list(r) for r in requests], list(engine.submit(ps[5], cfgs[5]))
    assert got[True] == got[False]
    assert scratchlm.compiled.compiled_step(m, rows=True).replay.replayed > 100  # steps past dynamo


def test_logprobs_on_keep_batched_equal_to_solo_and_are_the_models_log_softmax(model):
    """Recording logprobs changes no pick: with them on, 16 rows together give their solo ids, and each
    id's logprob is the log_softmax of the model's logits at its position (before any filter)."""
    cfgs, ps = configs(16), prompts(16)
    with Engine(model, max_batch=16) as engine:
        solo = [list(engine.submit(p, c)) for p, c in zip(ps, cfgs, strict=True)]
        requests = [engine.submit(p, c, top_logprobs=3) for p, c in zip(ps, cfgs, strict=True)]
        together = [list(r) for r in requests]
    assert together == solo
    for p, ids, r in list(zip(ps, together, requests, strict=True))[:4]:
        with torch.no_grad():
            logits = model(torch.tensor([p + ids]))[0][0, len(p) - 1 : -1]  # (new, vocab)
        want = torch.log_softmax(logits.float(), dim=-1)
        got = [x.logprob for x in r.logprobs]
        assert got == pytest.approx(want[range(len(ids)), ids].tolist(), abs=1e-4)
        assert [[i for i, _ in x.top] for x in r.logprobs] == torch.topk(want, 3).indices.tolist()


def test_greedy_equals_generate_ids_with_stop_ids_truncation_and_past_the_context(model):
    block = model.config.block_size
    greedy = SampleConfig(temperature=0.0, max_new_tokens=2 * block)  # slides past the context end twice
    long_prompt = list(range(5, 5 + block + 20))  # truncated to its last block_size tokens
    with Engine(model) as engine:
        a, b = engine.submit([1, 40, 41], greedy), engine.submit(long_prompt, greedy)
        assert list(a) == alone(model, [1, 40, 41], greedy)
        assert list(b) == alone(model, long_prompt, greedy)
        assert b.prompt_tokens == block and b.finish_reason == "length"
        stop = {alone(model, [1, 40, 41], greedy)[5]}
        c = engine.submit([1, 40, 41], greedy, stop_ids=stop)
        assert list(c) == alone(model, [1, 40, 41], greedy, stop)
        assert c.finish_reason == "stop" and c.completion_tokens < 6


def test_a_request_joins_while_another_decodes(model):
    long, short = SampleConfig(max_new_tokens=400, seed=3), SampleConfig(max_new_tokens=8, seed=4)
    with Engine(model) as engine:
        first = engine.submit([1, 50], long)
        ids = iter(first)
        head = [next(ids) for _ in range(5)]  # first is decoding
        second = engine.submit([1, 60, 61], short)
        assert list(second) == alone(model, [1, 60, 61], short)
        assert first.finish_reason is None  # the short one came and went while the long one ran
        assert head + list(ids) == alone(model, [1, 50], long)


def test_cancel_stops_a_row_and_the_others_go_on(model):
    cfgs, ps = configs(3), prompts(3)
    cfgs[1] = dataclasses.replace(cfgs[1], max_new_tokens=100_000)
    with Engine(model) as engine:
        requests = [engine.submit(p, c) for p, c in zip(ps, cfgs, strict=True)]
        ids = iter(requests[1])
        head = [next(ids) for _ in range(3)]
        requests[1].cancel()
        got = head + list(ids)
        assert requests[1].finish_reason == "cancelled"
        assert got == alone(model, ps[1], dataclasses.replace(cfgs[1], max_new_tokens=len(got)))
        for i in (0, 2):
            assert list(requests[i]) == alone(model, ps[i], cfgs[i])
            assert requests[i].finish_reason == "length"


def test_queue_full_when_max_queue_requests_wait(model):
    endless = SampleConfig(max_new_tokens=100_000)
    with Engine(model, max_batch=1, max_queue=2) as engine:
        running = engine.submit([1], endless)
        next(iter(running))  # it holds the only row now
        waiting = [engine.submit([1], endless), engine.submit([1], endless)]
        with pytest.raises(QueueFull):
            engine.submit([1], endless)
        for r in (running, *waiting):
            r.cancel()
        for r in waiting:
            assert list(r) == [] and r.finish_reason == "cancelled"
        assert running.finish_reason == "cancelled"
        assert list(engine.submit([1, 40], SampleConfig(max_new_tokens=3))) != []  # room again


def test_bad_prompts_are_refused_at_submit(model):
    with Engine(model) as engine:
        with pytest.raises(ValueError, match="at least one prompt token"):
            engine.submit([], SampleConfig())
        with pytest.raises(ValueError, match="outside the model's vocabulary"):
            engine.submit([1, model.config.vocab_size], SampleConfig())


def test_async_iteration_never_blocks_the_event_loop(model):
    cfgs, ps = configs(4), prompts(4)

    async def main(engine):
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def collect(request):
            return [token async for token in request]

        tick = asyncio.create_task(ticker())
        outs = await asyncio.gather(*(collect(engine.submit(p, c)) for p, c in zip(ps, cfgs, strict=True)))
        stop.set()
        await tick
        return outs, ticks

    with Engine(model) as engine:
        outs, ticks = asyncio.run(main(engine))
    assert outs == [alone(model, p, c) for p, c in zip(ps, cfgs, strict=True)]
    assert ticks > 10  # the loop kept running other tasks while the worker decoded


def test_an_error_in_one_request_ends_only_that_request(model, monkeypatch):
    real = engine_mod.pick_next

    def pick_next(logits, cfg, generator, seen=None):
        if cfg.seed == 666:
            raise RuntimeError("boom")
        return real(logits, cfg, generator, seen)

    monkeypatch.setattr(engine_mod, "pick_next", pick_next)
    cfgs, ps = configs(3), prompts(3)
    with Engine(model) as engine:
        bad = engine.submit([1, 2, 3], SampleConfig(seed=666))
        good = [engine.submit(p, c) for p, c in zip(ps, cfgs, strict=True)]
        with pytest.raises(RuntimeError, match="boom"):
            list(bad)
        assert bad.finish_reason == "error"
        assert [list(r) for r in good] == [alone(model, p, c) for p, c in zip(ps, cfgs, strict=True)]
        assert list(engine.submit([1, 9], SampleConfig(max_new_tokens=4))) != []  # the worker lives on


def test_close_joins_the_worker_and_cancels_what_is_left(model):
    engine = Engine(model, max_batch=1)
    running = engine.submit([1], SampleConfig(max_new_tokens=100_000))
    next(iter(running))
    waiting = engine.submit([1], SampleConfig())
    engine.close()
    assert not engine._thread.is_alive()
    assert running.finish_reason == waiting.finish_reason == "cancelled"
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([1], SampleConfig())


def record_chunks(engine: Engine) -> list[tuple[list[int], int]]:
    """(prompt, ids in the chunk) of every prefill chunk the engine runs from now on."""
    chunks, real_chunk = [], engine._chunk

    def chunk(request, n):
        chunks.append((request.prompt_ids, n))
        real_chunk(request, n)

    engine._chunk = chunk
    return chunks


def test_chunked_prefill_gives_the_ids_of_a_whole_prefill(model):
    """Prompts and refills (past the context end) prefilled 8 ids a step decode as batch-1 generation,
    which prefills each in one forward: greedy ids equal, a sample's too."""
    block = model.config.block_size
    prompt = [1, *range(30, 30 + block - 4)]  # 61 ids: 8 chunks
    greedy = SampleConfig(temperature=0.0, max_new_tokens=2 * block)
    sampled = SampleConfig(max_new_tokens=block, seed=7)
    with Engine(model, prefill_chunk=8) as engine:
        chunks = record_chunks(engine)
        running = engine.submit([1, 50], SampleConfig(max_new_tokens=block - 4))  # never reaches a refill
        next(iter(running))  # it decodes: the prompts below go in 8 ids a step
        assert list(engine.submit(prompt, greedy)) == alone(model, prompt, greedy)
        assert [n for p, n in chunks if p == prompt][:8] == [8] * 7 + [5]
        # Two rows whose refills (47 ids) come at different steps: each refill goes in beside a decoding row.
        a, b = [1, 40, 41], [1, *range(60, 80)]
        ra, rb = engine.submit(a, greedy), engine.submit(b, sampled)
        assert (list(ra), list(rb)) == (alone(model, a, greedy), alone(model, b, sampled))
        assert 8 in [n for p, n in chunks if p == a]  # a refill, in chunks (its prompt went in whole)
    with Engine(model, prefill_chunk=block) as engine:  # one chunk: the whole prompt at once
        assert list(engine.submit(prompt, greedy)) == alone(model, prompt, greedy)


def test_a_long_prompt_does_not_stall_the_running_rows(model):
    """While a long prompt goes in chunk by chunk, a running request gets an id between every two chunks."""
    block = model.config.block_size
    running_cfg = SampleConfig(max_new_tokens=block - 4, seed=3)  # never reaches a refill
    long_prompt = [1, *range(100, 100 + block - 5)]  # 59 ids: 8 chunks of up to 8
    with Engine(model, prefill_chunk=8) as engine:
        running = engine.submit([1, 50], running_cfg)
        ids = iter(running)
        head = [next(ids) for _ in range(3)]  # it is decoding
        at_chunk = []  # the running request's ids so far, at each chunk of the long prompt
        real_chunk = engine._chunk

        def chunk(request, n):
            if request.prompt_ids == long_prompt:
                at_chunk.append(running.completion_tokens)
            real_chunk(request, n)

        engine._chunk = chunk
        long = engine.submit(long_prompt, SampleConfig(temperature=0.0, max_new_tokens=5))
        assert list(long) == alone(model, long_prompt, SampleConfig(temperature=0.0, max_new_tokens=5))
        assert len(at_chunk) == 8
        assert all(b > a for a, b in zip(at_chunk, at_chunk[1:], strict=False))  # a new id between chunks
        assert running.finish_reason is None or at_chunk[-1] < running_cfg.max_new_tokens
        assert head + list(ids) == alone(model, [1, 50], running_cfg)
