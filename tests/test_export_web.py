"""`scratchlm export --format web`: the static page runs the GGUF in headless Chromium through wllama
(llama.cpp in WebAssembly) and its greedy text equals `scratchlm sample --temperature 0`'s."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import scratchlm
from scratchlm.cli import main
from scratchlm.config import SampleConfig
from scratchlm.decode import stream_text
from scratchlm.formats.webpage import WLLAMA_VERSION

from .conftest import missing_tool, need_chromium, tiny_config
from .test_sft import greedy_reply, sft_config, write_qa

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "build" / "web-runtime" / "node_modules"
PROMPT = "Prince Andrew"


def need_runtime() -> Path:
    if not (NODE_MODULES / "@wllama" / "wllama" / "esm" / "index.js").is_file():
        missing_tool(f"needs the web runtime in {NODE_MODULES}: run `make web-runtime`")
    return NODE_MODULES


def trained_llama(tmp_path_factory, tiny_corpus, kind: str) -> Path:
    """A tiny trained llama-flavour run (llama.cpp's GPT-2 uses tanh GELU, which greedy parity would trip)."""
    from scratchlm.commands.prepare import prepare
    from scratchlm.commands.train import train

    run = tmp_path_factory.mktemp("web") / kind
    cfg = tiny_config(tiny_corpus)
    cfg.model.flavour, cfg.tokenizer.kind = "llama", kind
    prepare(run, cfg)
    train(run, cfg)
    return run


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, tiny_corpus) -> Path:
    # Unigram: llama.cpp's plamo2 tokenizer, which adds no BOS of its own; the page must start at <|bos|>.
    return trained_llama(tmp_path_factory, tiny_corpus, "unigram")


@pytest.fixture(scope="module")
def bytelevel_run(tmp_path_factory, tiny_corpus) -> Path:
    # Byte-level BPE: llama.cpp's gpt2 tokenizer, which adds the BOS itself: the page must not add a second.
    return trained_llama(tmp_path_factory, tiny_corpus, "bytelevel")


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = need_chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=390,844",
        # No network but the local server: a page that reached for the CDN would fail to load.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(180)
    yield driver
    driver.quit()


class _Quiet(SimpleHTTPRequestHandler):
    requested: list[str] = []

    def log_message(self, fmt, *args):
        _Quiet.requested.append(self.path)


@contextlib.contextmanager
def opened(driver, folder: Path):
    """Serve `folder` as `python -m http.server` would and open its page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        yield driver
    finally:
        server.shutdown()
        thread.join()


def complete(driver, prompt: str, n: int) -> str:
    """window.scratchlm.complete(prompt) greedy, as a web developer's code would call it."""
    return driver.execute_async_script(
        """const [prompt, n, done] = arguments;
        (async () => {
          while (!window.scratchlm) await new Promise((r) => setTimeout(r, 50));
          return await window.scratchlm.complete(prompt, {max_new_tokens: n, temperature: 0});
        })().then(done, (e) => done("ERROR: " + e));""",
        prompt,
        n,
    )


def complete_in_page(driver, folder: Path, prompt: str, n: int) -> str:
    with opened(driver, folder):
        return complete(driver, prompt, n)


# "auto": a run trained with `--preset auto` (conftest.preset_auto_run), the model README's path gives users.
RUNS = {"unigram": "llama_run", "bytelevel": "bytelevel_run", "auto": "preset_auto_run"}


@pytest.mark.parametrize("kind", RUNS)
def test_web_page_continues_text_as_scratchlm_sample(kind, request, browser, tmp_path, capsys):
    vendor = need_runtime()
    llama_run = request.getfixturevalue(RUNS[kind])
    out = tmp_path / "site"
    assert (
        main(["export", str(llama_run), "--format", "web", "--out", str(out), "--vendor", str(vendor)]) == 0
    )
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "index.html",
        "page.js",
        "page.css",
        "model.gguf",
        "scratchlm.json",
        "vendor/wllama/index.js",
        "vendor/wllama/wllama.wasm",
    } <= names
    page = json.loads((out / "scratchlm.json").read_text())
    lm = scratchlm.load(llama_run)
    assert page["chat"] is False and page["n_ctx"] == lm.config.model.block_size
    assert "http" not in json.dumps(page["runtime"])

    expected = "".join(stream_text(lm, PROMPT, SampleConfig(temperature=0, max_new_tokens=20)))
    _Quiet.requested.clear()
    text = complete_in_page(browser, out, PROMPT, 20)
    assert text == expected and len(expected) > 5
    assert "/vendor/wllama/wllama.wasm" in _Quiet.requested and "/model.gguf" in _Quiet.requested


def test_web_page_of_an_sft_run_chats_and_stops_at_end_of_turn(llama_run, browser, tmp_path):
    vendor = need_runtime()
    run = tmp_path / "chat"
    scratchlm.sft(run, sft_config(llama_run, [write_qa(tmp_path / "qa.jsonl")]))
    lm = scratchlm.load(run)
    question = "Who wrote War and Peace?"
    reply, ended = greedy_reply(lm, question)
    assert ended  # the reply ends at <|end|> well before the 20-token limit
    out = tmp_path / "site"
    scratchlm.export(run, format="web", out=out, vendor=vendor)
    assert json.loads((out / "scratchlm.json").read_text())["chat"] is True
    with opened(browser, out) as page:
        assert complete(page, question, 20) == reply
        # The visible page: the same reply streamed into its output, the buttons back at rest.
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        for field, value in (("temperature", "0"), ("max-tokens", "20")):
            page.find_element(By.ID, field).clear()
            page.find_element(By.ID, field).send_keys(value)
        page.find_element(By.ID, "prompt").send_keys(question)
        page.find_element(By.ID, "send").click()
        WebDriverWait(page, 60).until(lambda d: d.find_element(By.ID, "status").text == "Done.")
        assert page.find_element(By.ID, "output").text == reply.strip()
        assert page.find_element(By.ID, "stop").get_attribute("disabled") is not None
        assert page.find_element(By.ID, "send").is_enabled()


def test_web_export_defaults_to_the_pinned_cdn_and_refuses_a_bad_vendor(trained_run, tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["export", str(trained_run), "--format", "web", "--out", str(out), "--dtype", "q8_0"]) == 0
    runtime = json.loads((out / "scratchlm.json").read_text())["runtime"]
    assert runtime["module"] == f"https://cdn.jsdelivr.net/npm/@wllama/wllama@{WLLAMA_VERSION}/esm/index.js"
    assert not (out / "vendor").exists() and (out / "model.gguf").read_bytes()[:4] == b"GGUF"
    capsys.readouterr()
    assert (
        main(
            [
                "export",
                str(trained_run),
                "--format",
                "web",
                "--out",
                str(tmp_path / "b"),
                "--vendor",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0 and "--vendor" in err and "npm install" in err and not (tmp_path / "b").exists()
    )
    # --force replaces what the export wrote and keeps what the user added.
    (out / "CNAME").write_text("example.org\n")
    assert main(["export", str(trained_run), "--format", "web", "--out", str(out), "--force"]) == 0
    assert (out / "CNAME").read_text() == "example.org\n" and (out / "index.html").is_file()
