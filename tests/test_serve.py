"""`scratchlm serve`: the official openai client against a live server gets the sampler's own text; every
bad request is a 4xx with an OpenAI-shaped body; 16 streams at once each equal their solo run; a real
browser chats on the page.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from scratchlm import chat_template  # noqa: E402
from scratchlm import engine as engine_mod  # noqa: E402
from scratchlm.checkpoint import load  # noqa: E402
from scratchlm.cli import main  # noqa: E402
from scratchlm.decode import generate_ids, prompt_ids_for  # noqa: E402
from scratchlm.engine import Engine  # noqa: E402
from scratchlm.server.app import create_app, running  # noqa: E402

from .conftest import need_chromium  # noqa: E402

NAME = "tiny"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base_lm(trained_run_template):
    return load(trained_run_template)


@pytest.fixture(scope="module")
def chat_lm(base_lm):
    """The tiny base model, marked as an SFT run: the server's chat path runs whatever the model says."""
    cfg = copy.deepcopy(base_lm.config)
    cfg.sft.base = "runs/base"
    return dataclasses.replace(base_lm, config=cfg)


def make_app(lm, **kw):
    kw.setdefault("engine", Engine(lm.model, max_queue=64))
    return create_app(lm, NAME, **kw)


@pytest.fixture(scope="module")
def chat_server(chat_lm):
    with running(make_app(chat_lm)) as url:
        yield url


@pytest.fixture(scope="module")
def client(chat_server):
    return openai.OpenAI(base_url=chat_server + "/v1", api_key="unused", max_retries=0, timeout=60)


def solo(lm, ids, max_tokens, stop_ids, temperature=0.0, seed=0) -> list[int]:
    """The sampler alone, with the run's sample settings for what a request leaves out (top_k, ...)."""
    cfg = dataclasses.replace(lm.config.sample, max_new_tokens=max_tokens, temperature=temperature, seed=seed)
    return list(generate_ids(lm.model, ids, cfg, stop_ids))


def completion_ids(lm, prompt):
    return prompt_ids_for(lm.tokenizer, prompt, lm.model.config.block_size)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Prince Andrew?"}]


def chat_ids(lm, messages=MESSAGES):
    return chat_template.render(messages, lm.tokenizer, add_generation_prompt=True).ids


def test_models_and_health(client, chat_server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert httpx.get(chat_server + "/health").json()["chat"] is True


def test_greedy_completion_is_the_samplers_text_with_usage(client, chat_lm):
    ids = completion_ids(chat_lm, "Prince Andrew")
    want = solo(chat_lm, ids, 20, {chat_lm.tokenizer.eos_id})
    r = client.completions.create(model=NAME, prompt="Prince Andrew", max_tokens=20, temperature=0)
    assert r.choices[0].text == chat_lm.tokenizer.decode(want)
    assert r.choices[0].finish_reason == ("length" if len(want) == 20 else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(want))
    assert r.usage.total_tokens == len(ids) + len(want)

    chunks = list(
        client.completions.create(
            model=NAME,
            prompt="Prince Andrew",
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == chat_lm.tokenizer.decode(want)
    assert chunks[-1].usage.completion_tokens == len(want) and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason


def test_greedy_chat_streaming_and_not(client, chat_lm):
    ids = chat_ids(chat_lm)
    want = chat_lm.tokenizer.decode(solo(chat_lm, ids, 24, set(chat_template.stop_ids(chat_lm.tokenizer))))
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.usage.prompt_tokens == len(ids)
    stream = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_n_choices_are_the_solo_runs_of_consecutive_seeds(client, chat_lm):
    ids = completion_ids(chat_lm, "The war")
    r = client.completions.create(model=NAME, prompt="The war", max_tokens=12, temperature=1.0, n=3, seed=7)
    eos = {chat_lm.tokenizer.eos_id}
    want = [chat_lm.tokenizer.decode(solo(chat_lm, ids, 12, eos, 1.0, 7 + i)) for i in range(3)]
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == want
    streamed = ["", "", ""]
    for chunk in client.completions.create(
        model=NAME, prompt="The war", max_tokens=12, temperature=1.0, n=3, seed=7, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == want


def test_stop_strings_end_the_text_before_them(client):
    args = dict(model=NAME, prompt="Prince", max_tokens=40, temperature=1.0, seed=3)
    full = client.completions.create(**args).choices[0].text
    at = next(i for i in range(4, len(full) - 2) if full[i : i + 2].isalpha())  # two letters mid-text
    stop = full[at : at + 2]
    r = client.completions.create(**args, stop=[stop, "@@"])
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**args, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.find(stop)]


def test_16_simultaneous_streams_each_equal_their_solo_run(client, chat_lm):
    ids = chat_ids(chat_lm)
    stops = set(chat_template.stop_ids(chat_lm.tokenizer))

    def one(seed):
        stream = client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_tokens=16, temperature=0.9, seed=seed, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(100, 116)))
    want = [chat_lm.tokenizer.decode(solo(chat_lm, ids, 16, stops, 0.9, s)) for s in range(100, 116)]
    assert got == want


def test_a_client_that_hangs_up_cancels_its_request(chat_lm):
    engine = Engine(chat_lm.model)
    submitted = []
    real_submit = engine.submit
    engine.submit = lambda *a, **k: submitted.append(real_submit(*a, **k)) or submitted[-1]
    with running(make_app(chat_lm, engine=engine)) as url:
        body = {"model": NAME, "prompt": "Prince", "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        deadline = time.monotonic() + 10
        while submitted[0].finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert submitted[0].finish_reason == "cancelled"
        assert submitted[0].completion_tokens < 2000


def error_of(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def tc(chat_lm):
    with TestClient(make_app(chat_lm, max_tokens_limit=100, max_body_bytes=4000)) as c:
        yield c


def test_bad_requests_are_openai_shaped_4xx(tc, chat_lm):
    ok = {"model": NAME, "prompt": "Hi", "max_tokens": 2}
    url = "/v1/completions"
    assert tc.post(url, json=ok).status_code == 200
    error_of(
        tc.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json"
    )
    error_of(tc.post(url, json={**ok, "temperature": "hot"}), 400, param="temperature")
    error_of(tc.post(url, json={**ok, "max_tokens": 2.5}), 400, param="max_tokens")
    error_of(tc.post(url, json={**ok, "n": 0}), 400, param="n")
    error_of(tc.post(url, json={"model": NAME}), 400, param="prompt")
    error_of(tc.post(url, json={**ok, "model": "gpt-4"}), 404, "model_not_found", "model")
    error_of(tc.post(url, json={**ok, "max_tokens": 101}), 400, param="max_tokens")
    error_of(tc.post(url, json={**ok, "prompt": "x" * 5000}), 413, "body_too_large")
    long = " ".join(["Prince Andrew"] * 60)
    error_of(tc.post(url, json={**ok, "prompt": long}), 400, "context_length_exceeded", "prompt")
    r = tc.post(url, json={**ok, "prompt": long, "truncate_prompt_tokens": 10})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 10
    chat = "/v1/chat/completions"
    error_of(tc.post(chat, json={"model": NAME, "messages": []}), 400, param="messages")
    bad_role = {"model": NAME, "messages": [{"role": "tool", "content": "x"}]}
    error_of(tc.post(chat, json=bad_role), 400)
    order = {"model": NAME, "messages": [{"role": "assistant", "content": "x"}]}
    error_of(tc.post(chat, json=order), 400, param="messages")
    long_chat = {"model": NAME, "messages": [{"role": "user", "content": long}]}
    error_of(tc.post(chat, json=long_chat), 400, "context_length_exceeded", "messages")
    error_of(tc.get("/v1/nothing"), 404)


def test_a_full_queue_is_429_with_retry_after_and_a_crash_is_one_500(chat_lm):
    engine = Engine(chat_lm.model)
    # raise_server_exceptions=False: see the 500 a client gets rather than the test client re-raising it.
    with TestClient(make_app(chat_lm, engine=engine), raise_server_exceptions=False) as c:
        body = {"model": NAME, "prompt": "Hi", "max_tokens": 2}

        def full(*a, **k):
            raise engine_mod.QueueFull("full")

        real, engine.submit = engine.submit, full
        r = c.post("/v1/completions", json=body)
        error_of(r, 429, "queue_full")
        assert r.headers["retry-after"] == "1"

        def crash(*a, **k):
            raise RuntimeError("boom")

        engine.submit = crash
        assert error_of(c.post("/v1/completions", json=body), 500)["type"] == "server_error"
        engine.submit = real
        assert c.post("/v1/completions", json=body).status_code == 200


def test_the_api_key_is_required_when_set(chat_lm):
    with TestClient(make_app(chat_lm, api_key="s3cret")) as c:
        body = {"model": NAME, "prompt": "Hi", "max_tokens": 2}
        error_of(c.post("/v1/completions", json=body), 401, "invalid_api_key")
        error_of(c.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
        error_of(c.get("/v1/models"), 401)
        ok = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_every_v1_route_is_guarded_by_the_api_key(chat_lm):
    """Walks the app's own routes, so a /v1/ route added without the key dependency fails here."""
    from fastapi.routing import APIRoute

    from scratchlm.server.app import require_key

    app = make_app(chat_lm, api_key="s3cret")
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/v1/")]
    assert len(routes) >= 3
    with TestClient(app) as c:
        for route in routes:
            assert any(d.call is require_key for d in route.dependant.dependencies), route.path
            path = re.sub(r"\{[^}]*\}", "x", route.path)  # any path parameter: the key is checked first
            for method in route.methods:
                error_of(c.request(method, path), 401, "invalid_api_key")


def test_a_base_model_answers_completions_and_refuses_chat_with_a_reason(base_lm):
    with TestClient(make_app(base_lm)) as c:
        assert c.get("/health").json()["chat"] is False
        body = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}]}
        err = error_of(c.post("/v1/chat/completions", json=body), 400, "model_not_chat")
        assert "/v1/completions" in err["message"]
        assert (
            c.post("/v1/completions", json={"model": NAME, "prompt": "Hi", "max_tokens": 2}).status_code
            == 200
        )


def test_the_page_and_its_files_are_served(tc):
    page = tc.get("/")
    assert page.status_code == 200 and "chat.js" in page.text
    js = tc.get("/static/chat.js").text
    assert "textContent" in js and "innerHTML" not in js.replace("never innerHTML", "")
    assert tc.get("/static/chat.css").status_code == 200


def test_serve_cli_mistakes_are_one_line(trained_run_template, tmp_path, capsys):
    assert main(["serve", str(trained_run_template), "--max-batch", "0"]) == 2
    assert "--max_batch 0" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_browser_chats_streams_stops_and_starts_over(chat_lm, tmp_path):
    CHROMIUM, DRIVER = need_chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=390,844"):
        options.add_argument(arg)  # a phone's width
    # A slow stream, so the stop button finds it running: each token waits 20 ms.
    engine = Engine(chat_lm.model)
    real_push = engine_mod.Request._push

    def slow_push(self, token, *rest):
        time.sleep(0.02)
        real_push(self, token, *rest)

    engine_mod.Request._push = slow_push
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        with running(make_app(chat_lm, engine=engine)) as url:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 20)
            wait.until(lambda d: d.find_element(By.ID, "model").text == NAME)
            driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
            limit = driver.find_element(By.ID, "max-tokens")
            limit.clear()
            limit.send_keys("1000")
            driver.find_element(By.ID, "input").send_keys("Who is Prince Andrew?")
            driver.find_element(By.ID, "send").click()
            wait.until(lambda d: len(d.find_element(By.CSS_SELECTOR, ".assistant").text) > 5)
            assert driver.find_element(By.CSS_SELECTOR, ".user").text == "Who is Prince Andrew?"
            assert driver.find_element(By.CSS_SELECTOR, ".assistant.streaming")
            driver.find_element(By.ID, "stop").click()
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".assistant.streaming"))
            stopped = driver.find_element(By.CSS_SELECTOR, ".assistant").text
            time.sleep(0.3)
            assert driver.find_element(By.CSS_SELECTOR, ".assistant").text == stopped  # no more tokens
            assert not driver.find_elements(By.CSS_SELECTOR, ".error")
            driver.save_screenshot(str(tmp_path / "chat.png"))
            driver.find_element(By.ID, "new-chat").click()
            assert not driver.find_elements(By.CSS_SELECTOR, ".msg")
            assert (tmp_path / "chat.png").stat().st_size > 1000
    finally:
        engine_mod.Request._push = real_push
        driver.quit()
