"""`scratchlm serve` speaks the OpenAI API as the official client sends it: logprobs that are the model's own
log-softmax, null for "use the default", the developer role, max_completion_tokens, a 400 that names any
field the server cannot honour, a lower-case bearer scheme, and the run's sample settings as defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402

import scratchlm  # noqa: E402
from scratchlm import chat_template  # noqa: E402
from scratchlm.checkpoint import save_best, weights_of  # noqa: E402
from scratchlm.decode import generate_ids, prompt_ids_for  # noqa: E402
from scratchlm.engine import Engine  # noqa: E402
from scratchlm.run import Run  # noqa: E402
from scratchlm.server.app import create_app, running  # noqa: E402

NAME = "tiny"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Prince Andrew?"}]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def chat_lm(trained_run_template):
    lm = scratchlm.load(trained_run_template)
    cfg = copy.deepcopy(lm.config)
    cfg.sft.base = "runs/base"
    return dataclasses.replace(lm, config=cfg)


def make_app(lm, **kw):
    return create_app(lm, NAME, engine=Engine(lm.model, max_queue=64), **kw)


@pytest.fixture(scope="module")
def client(chat_lm):
    with running(make_app(chat_lm)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(lm, ids, max_tokens, stop_ids) -> list[int]:
    cfg = dataclasses.replace(lm.config.sample, max_new_tokens=max_tokens, temperature=0.0)
    return list(generate_ids(lm.model, ids, cfg, stop_ids))


def model_logprobs(lm, prompt_ids, new_ids) -> torch.Tensor:
    """log_softmax of the model's logits at each new token's position, one full forward: (len(new), vocab)."""
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([prompt_ids + new_ids]))  # (1, T, vocab)
    return torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1].float(), dim=-1)


def assert_top(got: list[tuple[str, float]], want_row: torch.Tensor, tok, k: int):
    values, indices = torch.topk(want_row, k)
    assert [g[1] for g in got] == pytest.approx(values.tolist(), abs=1e-4)
    names = [tok.decode([i]) or tok.piece(i) for i in indices.tolist()]
    assert [g[0] for g in got] == names


def test_chat_logprobs_are_the_models_log_softmax_streamed_and_not(client, chat_lm):
    tok = chat_lm.tokenizer
    ids = chat_template.render(MESSAGES, tok, add_generation_prompt=True).ids
    new = greedy(chat_lm, ids, 10, set(chat_template.stop_ids(tok)))
    want = model_logprobs(chat_lm, ids, new)
    args = dict(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**args)
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [tok.decode([t]) or tok.piece(t) for t in new]
    assert [c.logprob for c in content] == pytest.approx(want[range(len(new)), new].tolist(), abs=1e-4)
    assert content[0].bytes == list(content[0].token.encode())
    for c, row in zip(content, want, strict=True):
        assert_top([(t.token, t.logprob) for t in c.top_logprobs], row, tok, 3)
    streamed = [
        lp
        for chunk in client.chat.completions.create(**args, stream=True)
        if chunk.choices and chunk.choices[0].logprobs
        for lp in chunk.choices[0].logprobs.content
    ]
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]
    plain = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


def test_legacy_completion_logprobs_with_offsets(client, chat_lm):
    tok = chat_lm.tokenizer
    ids = prompt_ids_for(tok, "Prince Andrew", chat_lm.model.config.block_size)
    new = greedy(chat_lm, ids, 8, {tok.eos_id})
    want = model_logprobs(chat_lm, ids, new)
    args = dict(model=NAME, prompt="Prince Andrew", max_tokens=8, temperature=0, logprobs=2)
    lp = client.completions.create(**args).choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(want[range(len(new)), new].tolist(), abs=1e-4)
    assert lp.tokens == [tok.decode([t]) or tok.piece(t) for t in new]
    assert lp.text_offset == [len(tok.decode(new[:i])) for i in range(len(new))]
    for top, row in zip(lp.top_logprobs, want, strict=True):
        assert_top(sorted(top.items(), key=lambda kv: -kv[1]), row, tok, 2)
    streamed = [
        x
        for c in client.completions.create(**args, stream=True)
        if c.choices and c.choices[0].logprobs
        for x in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == lp.token_logprobs


def test_sampled_logprobs_are_the_unfiltered_distribution(client, chat_lm):
    """Sampling filters (temperature, top_p) change the draw, not the reported distribution."""
    tok = chat_lm.tokenizer
    ids = prompt_ids_for(tok, "The war", chat_lm.model.config.block_size)
    r = client.completions.create(
        model=NAME, prompt="The war", max_tokens=6, temperature=1.5, top_p=0.5, seed=4, logprobs=0
    )
    lp = r.choices[0].logprobs
    engine = Engine(chat_lm.model)  # the same request straight to an engine, for its ids
    try:
        cfg = dataclasses.replace(chat_lm.config.sample, max_new_tokens=6, temperature=1.5, top_p=0.5, seed=4)
        req = engine.submit(ids, cfg, {tok.eos_id}, top_logprobs=0)
        new = list(req)
    finally:
        engine.close()
    want = model_logprobs(chat_lm, ids, new)
    assert [x.logprob for x in req.logprobs] == pytest.approx(want[range(len(new)), new].tolist(), abs=1e-4)
    assert lp.token_logprobs == pytest.approx([x.logprob for x in req.logprobs], abs=1e-6)
    assert all(top == {} for top in lp.top_logprobs)


def test_null_fields_the_developer_role_and_max_completion_tokens(client, chat_lm):
    nulls = dict(n=None, top_p=None, temperature=None, stream=None, seed=3)
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4, **nulls)
    assert len(r.choices) == 1 and r.usage.completion_tokens <= 4
    r = client.completions.create(model=NAME, prompt="Hi", max_tokens=4, **nulls)
    assert len(r.choices) == 1

    developer = [{"role": "developer", "content": "Be brief."}, MESSAGES[1]]
    as_system = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    got = client.chat.completions.create(model=NAME, messages=developer, max_tokens=12, temperature=0)
    assert got.choices[0].message.content == as_system.choices[0].message.content
    assert got.usage.prompt_tokens == as_system.usage.prompt_tokens

    r = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_completion_tokens=3, temperature=1.0, seed=1
    )
    assert r.usage.completion_tokens <= 3
    both = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=9, max_completion_tokens=2, temperature=1.0, seed=1
    )
    assert both.usage.completion_tokens <= 2  # both given: the smaller holds


@pytest.fixture(scope="module")
def tc(chat_lm):
    with TestClient(make_app(chat_lm, max_tokens_limit=100)) as c:
        yield c


@pytest.mark.parametrize(
    "url, field, value",
    [
        ("/v1/chat/completions", "tools", [{"type": "function", "function": {"name": "f"}}]),
        ("/v1/chat/completions", "tool_choice", "auto"),
        ("/v1/chat/completions", "functions", [{"name": "f"}]),
        ("/v1/chat/completions", "response_format", {"type": "json_object"}),
        ("/v1/chat/completions", "logit_bias", {"5": 10}),
        ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
        ("/v1/chat/completions", "modalities", ["text", "audio"]),
        ("/v1/chat/completions", "top_logprobs", 2),  # without logprobs: true
        ("/v1/chat/completions", "presence_penalty", 0.5),
        ("/v1/completions", "echo", True),
        ("/v1/completions", "best_of", 3),
        ("/v1/completions", "suffix", "end"),
        ("/v1/completions", "frequency_penalty", 1.0),
    ],
)
def test_an_unsupported_field_is_a_400_that_names_it(tc, url, field, value):
    body = {"model": NAME, "max_tokens": 2}
    body |= {"messages": MESSAGES} if "chat" in url else {"prompt": "Hi"}
    r = tc.post(url, json={**body, field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]
    # the same field sent empty, off, or as OpenAI's own default asks for nothing: accepted
    off = {"response_format": {"type": "text"}, "modalities": ["text"], "tool_choice": "none", "best_of": 1}
    assert tc.post(url, json={**body, field: off.get(field)}).status_code == 200


def test_too_many_choices_and_max_completion_tokens_over_the_limit(tc):
    body = {"model": NAME, "messages": MESSAGES}
    r = tc.post("/v1/chat/completions", json={**body, "n": 17})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = tc.post("/v1/chat/completions", json={**body, "max_completion_tokens": 101})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"


def test_the_bearer_scheme_is_case_insensitive(chat_lm):
    with TestClient(make_app(chat_lm, api_key="s3cret")) as c:
        body = {"model": NAME, "prompt": "Hi", "max_tokens": 2}
        for header in ("bearer s3cret", "BEARER s3cret", "Bearer  s3cret"):
            assert c.post("/v1/completions", json=body, headers={"Authorization": header}).status_code == 200
        for header in ("bearer nope", "Basic s3cret", "s3cret"):
            assert c.post("/v1/completions", json=body, headers={"Authorization": header}).status_code == 401


@pytest.fixture(scope="module")
def greedy_run(trained_run_template, tmp_path_factory):
    """A run whose sample settings differ from the defaults: greedy, 5 tokens, no top-k. Written to its
    config.yaml and into its checkpoint, as `scratchlm train` writes both."""
    run = tmp_path_factory.mktemp("greedy") / "run"
    shutil.copytree(trained_run_template, run)
    lm = scratchlm.load(run)
    sample = dataclasses.replace(lm.config.sample, temperature=0.0, max_new_tokens=5, top_k=0)
    cfg = dataclasses.replace(lm.config, sample=sample)
    Run.at(run).save_config(cfg)
    weights = weights_of(lm.model.state_dict(), cfg.model.tie_embeddings)
    save_best(Run.at(run), lm.step, weights, cfg, lm.tokenizer.hash, val_loss=0.0)
    return run


def test_a_request_without_knobs_uses_the_runs_sample_settings(greedy_run):
    lm = scratchlm.load(greedy_run)
    assert lm.config.sample.temperature == 0.0 and lm.config.sample.max_new_tokens == 5
    tok = lm.tokenizer
    ids = prompt_ids_for(tok, "Prince Andrew", lm.model.config.block_size)
    want = tok.decode(greedy(lm, ids, 5, {tok.eos_id}))
    with TestClient(make_app(lm)) as c:
        for seed in (1, 2, 3):  # greedy: every seed gives the same text, and 5 tokens at most
            r = c.post(
                "/v1/completions", json={"model": NAME, "prompt": "Prince Andrew", "seed": seed}
            ).json()
            assert r["choices"][0]["text"] == want and r["usage"]["completion_tokens"] <= 5
        given = {"model": NAME, "prompt": "Prince Andrew", "temperature": 0, "max_tokens": 9}
        r = c.post("/v1/completions", json=given).json()  # what a request gives wins over the run's
        assert r["choices"][0]["text"] == tok.decode(greedy(lm, ids, 9, {tok.eos_id}))
