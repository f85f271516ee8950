"""Sampling: cache parity, the knobs, stop strings, streaming of split characters, prompt edges."""

from __future__ import annotations

import dataclasses
import gc
import io
import random

import pytest
import torch

import scratchlm
import scratchlm.decode as sample_mod
from scratchlm.cli import main
from scratchlm.compiled import compiled_step
from scratchlm.config import ModelConfig, RunConfig, SampleConfig, TokenizerConfig
from scratchlm.decode import (
    TextStream,
    draw_rows,
    filter_logits,
    filter_rows,
    generate_ids,
    pick_next,
    prompt_ids_for,
    stream_text,
)
from scratchlm.lm import LoadedModel
from scratchlm.model import GPT
from scratchlm.tokenizer import train_tokenizer

GREEDY = SampleConfig(temperature=0.0, max_new_tokens=24)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(flavour: str, block: int = 32) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        flavour=flavour, vocab_size=97, block_size=block, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
    )
    # float64 and a larger init spread: argmax ties cannot flip on rounding between the two paths.
    model = GPT(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)
    return model


@torch.no_grad()
def greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Reference: a full forward over the context per token, the context sliding like the sampler's
    (when it is full, it restarts from its last 3/4 and grows again)."""
    block = model.config.block_size
    ids, start = list(prompt), max(0, len(prompt) - block)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[start:]]))
        ids.append(int(logits[0, -1].argmax()))
        if len(ids) - start > block:
            start = len(ids) - 3 * block // 4
    return ids[len(prompt) :]


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_greedy_with_cache_equals_without_cache(flavour):
    model = tiny_model(flavour)
    prompt = [5, 17, 3, 42, 8]
    n = 64  # past block_size 32 twice: the sliding context is covered too
    got = list(generate_ids(model, prompt, SampleConfig(temperature=0.0, max_new_tokens=n)))
    assert got == greedy_without_cache(model, prompt, n)
    assert len(set(got)) > 3  # not a degenerate repetition of one token


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("blocked", [False, True], ids=["row-dots", "blocked-weights"])
def test_the_compiled_step_gives_the_eager_tokens_past_the_cache_and_from_a_prompt_at_the_limit(
    flavour, blocked, monkeypatch
):
    if blocked:  # every weight repacked in blocks of 16 rows, as large ones are
        monkeypatch.setattr(scratchlm.compiled, "_BLOCKED_MIN", 0)
    model = tiny_model(flavour)
    block = model.config.block_size
    for prompt in ([5, 17, 3], list(range(3, 3 + block - 1))):  # the second fills all but the last slot
        greedy, sampled = SampleConfig(temperature=0.0, max_new_tokens=80), SampleConfig(max_new_tokens=40)
        for cfg in (greedy, sampled):
            eager = list(generate_ids(model, prompt, cfg))
            compiled = list(generate_ids(model, prompt, dataclasses.replace(cfg, compile=True)))
            assert compiled == eager, (prompt, cfg)  # 80 tokens: the cache refills twice
    assert compiled_step(model) is compiled_step(model)  # compiled once per model


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_a_long_context_step_reads_the_filled_part_in_one_graph_and_gives_the_eager_tokens(
    flavour, monkeypatch
):
    """Contexts of 512 and more (here 32, in spans of 8) attend over the positions up to the newest one
    only: one graph, traced with the length as a symbol, serves every length the decoding passes through,
    over prefills and the refills at the context end."""
    monkeypatch.setattr(scratchlm.compiled, "_PREFIX_MIN", 0)
    monkeypatch.setattr(scratchlm.compiled, "_SPAN", 8)
    lengths = []
    view = scratchlm.compiled.StepCache.view
    monkeypatch.setattr(
        scratchlm.compiled.StepCache,
        "view",
        lambda self, *a: lengths.append(view(self, *a).k[0].size(2)) or view(self, *a),
    )
    model = tiny_model(flavour)
    block = model.config.block_size
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for prompt in ([5, 17, 3], list(range(3, 3 + block - 1))):
        for cfg in (SampleConfig(temperature=0.0, max_new_tokens=80), SampleConfig(max_new_tokens=40)):
            eager = list(generate_ids(model, prompt, cfg))
            assert list(generate_ids(model, prompt, dataclasses.replace(cfg, compile=True))) == eager
    assert sorted(set(lengths)) == [8, 16, 24, 32]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1


@pytest.mark.parametrize("long_context", [False, True], ids=["whole-cache", "filled-part"])
def test_a_compiled_decoder_calls_its_graph_straight_after_dynamo_chose_it(long_context, monkeypatch):
    """After dynamo's first call with a cache view, the decoder's steps call the graph it chose directly
    (compiled._Replay) and still give the eager tokens, prompt after prompt, over refills at the context
    end and (long contexts) over views of every length; what a decoder left is freed with it."""
    if long_context:
        monkeypatch.setattr(scratchlm.compiled, "_PREFIX_MIN", 0)
        monkeypatch.setattr(scratchlm.compiled, "_SPAN", 8)
    model = tiny_model("llama")
    replay = compiled_step(model).replay
    cfg = SampleConfig(temperature=0.0, max_new_tokens=40, compile=True)
    for prompt in ([5, 17, 3], [9, 9, 1, 4]):
        before = replay.replayed
        eager = list(generate_ids(model, prompt, dataclasses.replace(cfg, compile=False)))
        assert list(generate_ids(model, prompt, cfg)) == eager
        assert replay.replayed - before >= 39 - (4 if long_context else 1)  # one dynamo call per view
    gc.collect()
    assert not replay._calls


def test_a_model_made_under_inference_mode_decodes_compiled():
    """A model loaded inside torch.inference_mode has weights with no version counter: the compiled step
    takes them as they are (it raised "Inference tensors do not track version counter")."""
    with torch.inference_mode():
        model = tiny_model("gpt2")
        cfg = SampleConfig(temperature=0.0, max_new_tokens=20, compile=True)
        got = list(generate_ids(model, [5, 17], cfg))
        assert got == list(generate_ids(model, [5, 17], dataclasses.replace(cfg, compile=False)))


def test_the_compiled_step_follows_new_weights_and_keeps_two_models_apart():
    a, b = tiny_model("gpt2"), tiny_model("gpt2")
    with torch.no_grad():
        b.lm_head.weight.mul_(-1)  # tied to wte: another model of the same shapes
    cfg = SampleConfig(temperature=0.0, max_new_tokens=20, compile=True)
    eager = dataclasses.replace(cfg, compile=False)
    assert list(generate_ids(a, [5, 17], cfg)) == list(generate_ids(a, [5, 17], eager))
    assert list(generate_ids(b, [5, 17], cfg)) == list(generate_ids(b, [5, 17], eager))
    with torch.no_grad():  # as an optimizer step writes them: in place
        a.transformer.h[0].mlp.c_fc.weight.mul_(3)
    assert list(generate_ids(a, [5, 17], cfg)) == list(generate_ids(a, [5, 17], eager))


def test_top_k_1_equals_greedy():
    model = tiny_model("gpt2")
    greedy = list(generate_ids(model, [1, 2, 3], GREEDY))
    for seed in (1, 2):
        cfg = SampleConfig(temperature=1.5, top_k=1, max_new_tokens=24, seed=seed)
        assert list(generate_ids(model, [1, 2, 3], cfg)) == greedy


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = tiny_model("llama")
    # Temperature 3: the x20 weights make the top token ~0.999 likely at 1.0, where two seeds rarely part.
    cfg = SampleConfig(temperature=3.0, top_k=0, max_new_tokens=24, seed=3)
    a = list(generate_ids(model, [1, 2], cfg))
    assert a == list(generate_ids(model, [1, 2], cfg))
    assert a != list(generate_ids(model, [1, 2], SampleConfig(temperature=3.0, top_k=0, max_new_tokens=24)))


def test_draw_rows_samples_the_distribution_and_never_a_dropped_token():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0, 0.0])
    logits = probs.log()[None]  # the zeros are dropped tokens (-inf)
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.bincount(torch.tensor([draw_rows(logits, [g])[0] for _ in range(n)]), minlength=6)
    # 4 binomial standard deviations of each frequency: a correct sampler fails this ~1 in 10^4 times.
    assert (counts / n - probs).abs().le(4 * (probs * (1 - probs) / n).sqrt() + 1e-9).all(), counts
    assert counts[4:].sum() == 0


def test_pick_next_never_picks_what_top_k_top_p_min_p_drop():
    torch.manual_seed(0)
    logits = torch.randn(97)
    for cfg in (
        SampleConfig(temperature=1.5, top_k=5),
        SampleConfig(temperature=1.5, top_k=0, top_p=0.5),
        SampleConfig(temperature=1.5, top_k=0, min_p=0.2),
    ):
        kept = set(torch.isfinite(filter_logits(logits, cfg)).nonzero().view(-1).tolist())
        assert 1 < len(kept) < 97
        g = torch.Generator().manual_seed(1)
        picks = {pick_next(logits, cfg, g) for _ in range(2000)}
        assert picks <= kept and len(picks) > 1


def test_filter_and_draw_rows_in_a_batch_equal_each_row_alone():
    torch.manual_seed(0)
    logits = torch.randn(6, 4096) * 4
    cfgs = [
        SampleConfig(temperature=0.8, top_k=0),
        SampleConfig(temperature=1.2, top_k=40),
        SampleConfig(temperature=0.7, top_k=0, top_p=0.9),
        SampleConfig(temperature=1.0, top_k=200, top_p=0.95, min_p=0.05),
        SampleConfig(temperature=0.5, top_k=10),
        SampleConfig(temperature=1.0, top_k=0, min_p=0.1),
    ]
    batch = filter_rows(logits, cfgs)
    for i, cfg in enumerate(cfgs):
        assert torch.equal(batch[i], filter_logits(logits[i], cfg))
    ids = draw_rows(batch, [torch.Generator().manual_seed(i) for i in range(6)])
    assert ids == [pick_next(logits[i], cfgs[i], torch.Generator().manual_seed(i)) for i in range(6)]


def test_filters_by_hand():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()

    def kept(**kw):
        return torch.isfinite(filter_logits(logits, SampleConfig(**{"top_k": 0, "temperature": 1, **kw})))

    # top-p 0.8: 0.5 and 0.3 reach it; the 0.15 token comes after 0.8 is already covered.
    assert kept(top_p=0.8).tolist() == [True, True, False, False]
    assert kept(top_p=0.81).tolist() == [True, True, True, False]
    # min-p 0.2: keep tokens at least 0.2 x 0.5 = 0.1 likely.
    assert kept(min_p=0.2).tolist() == [True, True, True, False]
    assert kept(top_k=2).tolist() == [True, True, False, False]
    # Repetition penalty 2: a seen positive logit is halved, a seen negative one doubled.
    raw = torch.tensor([2.0, -1.0, 2.0, -1.0])
    seen = torch.tensor([True, True, False, False])
    out = filter_logits(raw, SampleConfig(repetition_penalty=2.0, temperature=1.0, top_k=0), seen)
    assert out.tolist() == [1.0, -2.0, 2.0, -1.0]


def test_repetition_penalty_changes_greedy_choice():
    model = tiny_model("gpt2")
    plain = list(generate_ids(model, [1, 2, 3], GREEDY))
    penalized = list(
        generate_ids(model, [1, 2, 3], SampleConfig(temperature=0, max_new_tokens=24, repetition_penalty=5.0))
    )
    assert penalized != plain
    # A strong penalty makes greedy decoding avoid repeats while unseen tokens remain.
    assert len(set(penalized)) > len(set(plain))


class CharTokenizer:
    """One id per character (ids are code points): enough for the text layer."""

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_text_stream_holds_back_a_possible_stop_string():
    stream = TextStream(CharTokenizer(), stop=["END", "\n\n"])
    pieces = []
    for ch in "The ENvoy said\nEND of it":
        pieces.append(stream.push(ord(ch)))
        if stream.stopped:
            break
    assert stream.stopped and "".join(pieces) == "The ENvoy said\n"
    # The "EN" of ENvoy was held back until "v" showed it is not a stop string.
    assert "EN" not in pieces and "ENv" in pieces


def test_stop_string_ends_generation_and_is_not_printed(trained_run):
    lm = scratchlm.load(trained_run)
    full = lm.generate("The", temperature=0, max_new_tokens=60)
    stop = full[12:15]
    cut = full.find(stop)
    assert len(stop) == 3
    assert lm.generate("The", temperature=0, max_new_tokens=60, stop=[stop]) == full[:cut]


@pytest.fixture(scope="module")
def japanese_tokenizer():
    rng = random.Random(0)
    base = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗い所で泣いていた。"
    docs = ["".join(rng.sample(base, len(base))) + "\n" for _ in range(200)]
    return train_tokenizer(docs, TokenizerConfig(vocab_size=340))


def test_japanese_streams_without_broken_characters(japanese_tokenizer, monkeypatch):
    tok = japanese_tokenizer
    text = "吾輩は猫である。鬱蒼とした森に棲む。"  # 鬱蒼, 森 and 棲 are unknown: byte-fallback pieces
    ids = tok.encode(text)
    assert tok.fallback_mask()[ids].sum() >= 9
    monkeypatch.setattr(sample_mod, "generate_ids", lambda model, prompt, cfg, stop_ids: iter(ids))
    lm = LoadedModel(tiny_model("gpt2"), tok, RunConfig(), 0)
    pieces = list(stream_text(lm, "", SampleConfig()))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) and len(pieces) > 10


def test_empty_prompt_starts_from_bos(japanese_tokenizer, monkeypatch):
    seen = {}

    def fake_generate(model, prompt, cfg, stop_ids):
        seen["prompt"] = prompt
        return iter([])

    monkeypatch.setattr(sample_mod, "generate_ids", fake_generate)
    lm = LoadedModel(tiny_model("gpt2"), japanese_tokenizer, RunConfig(), 0)
    assert list(stream_text(lm, "", SampleConfig())) == []
    assert seen["prompt"] == [japanese_tokenizer.bos_id]


def test_long_prompt_is_truncated_from_the_left_with_a_notice(japanese_tokenizer):
    tok = japanese_tokenizer
    prompt = "吾輩は猫である。" * 20
    full = tok.encode(prompt)
    assert len(full) > 32
    warn = io.StringIO()
    assert prompt_ids_for(tok, prompt, 32, warn) == full[-32:]
    assert f"the prompt is {len(full)} tokens" in warn.getvalue() and "last 32" in warn.getvalue()
    short = io.StringIO()
    assert prompt_ids_for(tok, "吾輩", 32, short) == [tok.bos_id] + tok.encode("吾輩")
    assert short.getvalue() == ""


def test_long_prompt_generates_in_the_cli(trained_run, capsys):
    assert main(["sample", str(trained_run), "The war " * 60, "--max_new_tokens", "5"]) == 0
    assert "longer than the model's context of 64" in capsys.readouterr().err


def test_prompts_file_gives_one_output_per_prompt(trained_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The"}\n\n{"prompt": "Prince Andrew"}\n{"prompt": ""}\n')
    args = [
        "sample",
        str(trained_run),
        "--prompts-file",
        str(prompts),
        "--max-new-tokens",
        "8",
        "--seed",
        "5",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("--- ")] == ["--- 1/3", "--- 2/3", "--- 3/3"]
    # Each prompt starts from the seed: its output does not depend on its place in the file.
    lm = scratchlm.load(trained_run)
    alone = lm.generate("Prince Andrew", max_new_tokens=8, seed=5)
    assert f"--- 2/3\nPrince Andrew{alone}\n" in out
    assert (trained_run / "samples.txt").read_text().count("--- step") == 3


@pytest.mark.parametrize(
    "content, args, message",
    [
        (None, [], "no such file"),
        ('{"prompt": "a"}\n{oops\n', [], ":2: not valid JSON"),
        ('{"text": "a"}\n', [], ":1: no field 'prompt' (it has: text); give each line a \"prompt\" string"),
        ("\n\n", [], "no prompts in it"),
        ("a\n", ["hello"], "give a PROMPT or --prompts_file"),
    ],
)
def test_prompt_mistakes_are_one_line_errors(trained_run, tmp_path, capsys, content, args, message):
    path = tmp_path / ("p.jsonl" if content and "{" in content else "p.txt")
    if content is not None:
        path.write_text(content)
    assert main(["sample", str(trained_run), *args, "--prompts_file", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("seed", range(5))
def test_filters_match_transformers_logits_processors(seed):
    tf = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, generator=g)
    history = torch.randint(0, 200, (30,), generator=g)
    cfg = SampleConfig(temperature=1.5, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    seen = torch.zeros(200, dtype=torch.bool)
    seen[history] = True
    ours = filter_logits(logits, cfg, seen)
    theirs = logits[None].clone()
    for processor in (
        tf.RepetitionPenaltyLogitsProcessor(1.3),
        tf.TemperatureLogitsWarper(1.5),
        tf.TopKLogitsWarper(50),
        tf.TopPLogitsWarper(0.9),
        tf.MinPLogitsWarper(0.05),
    ):
        theirs = processor(history[None], theirs)
    theirs = theirs[0]
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert 3 < int(torch.isfinite(ours).sum()) < 50  # the filters did cut, and not to one token
    kept = torch.isfinite(ours)
    torch.testing.assert_close(ours[kept], theirs[kept])
