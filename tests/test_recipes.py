"""The recipes (configs/*.yaml, docs/recipes/*.md) at smoke scale, through the same files and commands.

Every config is read by a test: each parses for every command that reads it, with its own values in the
merged settings, and prepares and trains a one-layer model with its own data/tokenizer/train settings but
shrunk by flags. The recipes' promises get their own tests: the keyword filter, the Japanese tokenizer, the
HF and GGUF exports, the Gutenberg → SFT → chat chain, and the Python page's code, run as written.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import scratchlm
from scratchlm.cli import main
from scratchlm.common import UserError
from scratchlm.config import RunConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.model import GPT
from scratchlm.run import Run
from scratchlm.settings import COMMAND_SECTIONS, RECIPE_COMMANDS
from scratchlm.tokenizer import Tokenizer

from .conftest import SHARED_DATA, shared_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PAGES = ROOT / "docs" / "recipes"
BUNDLED_SFT = Path(scratchlm.__file__).parent / "assets" / "self_instruct_seed_tasks.jsonl.gz"


def cli(*args) -> None:
    assert main([str(a) for a in args]) == 0, args


def shrunk(steps: int = 6, every: int = 3) -> list[str]:
    """Flags after --config that make any recipe a seconds-long CPU run: the recipe's data, tokenizer kind,
    flavour, optimizer, LR and schedule stay; its size, batch, length and device give way."""
    return " ".join(
        [
            "--model.n-layer 1 --model.n-head 2 --model.n-kv-head 0 --model.n-embd 32 --model.block-size 32",
            "--train.batch-size 4 --train.grad-accum 1 --train.batch-tokens 0 --train.warmup-steps 1",
            "--train.eval-batches 2 --train.max-minutes 0 --train.device cpu --train.compile false",
            "--train.log-interval 1 --train.threads 1",
            f"--train.max-steps {steps} --train.eval-interval {every}",
        ]
    ).split()


def recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def metrics(run: Path) -> list[dict]:
    return list(csv.DictReader(open(Run.at(run).metrics_path, encoding="utf-8")))


def val_losses(run: Path) -> list[float]:
    return [float(r["val_loss"]) for r in metrics(run) if r["val_loss"]]


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> Path:
    """~60 kB of War and Peace (bundled), after its Gutenberg header."""
    path = tmp_path_factory.mktemp("english") / "wp.txt"
    path.write_text(clean(read_text(bundled_corpus()))[:60_000], encoding="utf-8")
    return path


def wiki_jsonl(path: Path, keyword: str, n: int = 24) -> Path:
    """A small Wikipedia-like dump: n articles with the keyword and n without, each ~300 characters."""
    book = clean(read_text(bundled_corpus()))
    rows = []
    for i in range(2 * n):
        body = book[2000 + 400 * i : 2000 + 400 * i + 300]
        if i % 2 == 0:
            rows.append({"title": f"記事{i}", "text": f"{keyword}の記事{i}。{body}"})
        else:
            rows.append({"title": f"記事{i}", "text": f"別の話題{i}。{body}"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- every config


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_with_its_own_values_for_each_command_that_reads_it(config, tmp_path, capsys):
    values = recipe(config)
    assert values, f"{config} holds no settings"
    header = config.read_text(encoding="utf-8").split("\n")
    comments = [line for line in header if line.startswith("#")]
    # The header gives the commands, and they name this very file (a renamed config would leave stale ones).
    assert any(f"configs/{config.name}" in line for line in comments), f"{config}: no command names it"
    for named in re.findall(r"configs/([\w.-]+\.yaml)", "\n".join(comments)):
        assert (ROOT / "configs" / named).is_file(), f"{config} names configs/{named}, which is missing"
    commands = [c for c in RECIPE_COMMANDS if set(COMMAND_SECTIONS[c]) & set(values)]
    for command in commands:
        argv = [*command.split(), str(tmp_path / "run"), "--config", str(config), "--print_config"]
        assert main(argv) == 0, argv
        merged = yaml.safe_load(capsys.readouterr().out)
        for section in COMMAND_SECTIONS[command]:
            for key, value in (values.get(section) or {}).items():
                assert merged[section][key] == value, (command, section, key)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # the sizes the configs' headers and the recipe pages state
        ("gpt2-124m-gpu.yaml", 124.5e6),
        ("war-and-peace-gpt2.yaml", 89.0e6),
        ("gutenberg-pretrain.yaml", 134.1e6),
        ("japanese-english.yaml", 23.0e6),
        ("war-and-peace-tiny.yaml", 1.33e6),
    ],
)
def test_the_sizes_the_pages_state(name, params):
    values = recipe(ROOT / "configs" / name)
    cfg = RunConfig.from_dict({"model": values["model"]})
    cfg.model.vocab_size = values["tokenizer"]["vocab_size"]
    with torch.device("meta"):
        n = GPT(cfg.model).num_params()
    assert abs(n - params) / params < 0.01, f"{name}: {n:,} parameters"


def _smoke_input(config: Path, tmp_path: Path, english: Path) -> list[str]:
    include = (recipe(config).get("data") or {}).get("include")
    if include:
        return ["--input", str(wiki_jsonl(tmp_path / "dump.jsonl", include[0]))]
    return ["--input", str(english)]


@pytest.mark.parametrize("config", [c for c in CONFIGS if "model" in recipe(c)], ids=lambda p: p.name)
def test_every_training_config_prepares_and_trains_at_smoke_scale(config, tmp_path, english, one_thread):
    values, run = recipe(config), tmp_path / "run"
    small_vocab = ["--tokenizer.vocab-size", "400", "--data.min-chars", "1"]
    cli("prepare", run, "--config", config, *_smoke_input(config, tmp_path, english), *small_vocab)
    cli("train", run, "--config", config, *shrunk(steps=6, every=3))
    saved = Run.at(run).load_config()
    # The recipe reached the run: what it says about data, tokenizer, model and training is what ran.
    for section in ("tokenizer", "model", "train"):
        for key in ("kind", "flavour", "optimizer", "schedule", "lr", "bias", "tie_embeddings", "activation"):
            if key in (values.get(section) or {}):
                assert getattr(getattr(saved, section), key) == values[section][key], (section, key)
    losses = val_losses(run)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses  # six steps at the recipe's own LR already lower the val loss


# ---------------------------------------------------------------- 1. a novel's style


def test_novel_recipe_reports_bits_per_byte_samples_and_serves_the_page(tmp_path, english, one_thread):
    from fastapi.testclient import TestClient

    from scratchlm.server.app import create_app

    config, run = ROOT / "configs" / "war-and-peace-tiny.yaml", tmp_path / "wp"
    cli("prepare", run, "--config", config, "--input", english, "--tokenizer.vocab-size", "500")
    cli("train", run, "--config", config, *shrunk(steps=20, every=10))
    cli("eval", run, "--sample-tokens", "8")
    result = json.loads(Run.at(run).eval_path.read_text())
    assert 0 < result["bits_per_byte"] < 8 and result["perplexity"] > 1 and result["tokens"] > 1000
    assert "bits per byte" in (run / "report.md").read_text()
    lm = scratchlm.load(run)
    with TestClient(create_app(lm, "wp")) as c:
        assert c.get("/").status_code == 200 and c.get("/health").json()["chat"] is False
        body = {"model": "wp", "prompt": "Prince Andrew", "max_tokens": 5, "temperature": 0}
        reply = c.post("/v1/completions", json=body).json()
        assert reply["choices"][0]["text"] == lm.generate("Prince Andrew", max_new_tokens=5, temperature=0)


# ---------------------------------------------------------------- 2. Japanese + English


MIXED = "吾輩は猫である。名前はまだ無い。 Prince Andrew said: “Well?” 𠮷野家で🍜を食べた。\tＡＢＣ ｶﾀｶﾅ\r\n"


def test_japanese_english_recipe_tokenizer_round_trips_mixed_text_and_exports_gguf(
    tmp_path, english, one_thread
):
    gguf = pytest.importorskip("gguf")
    neko = shared_file("soseki_wagahai_neko.txt")
    config, run = ROOT / "configs" / "japanese-english.yaml", tmp_path / "ja-en"
    ja = tmp_path / "neko.txt"
    ja.write_text(neko.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    inputs = ["--input", ja, "--input", english]
    cli("prepare", run, "--config", config, *inputs, "--tokenizer.vocab-size", "2200")
    tok = Tokenizer.load(run / "tokenizer")
    assert tok.kind == "unigram"
    for text in (MIXED, "「吾輩」は English の中に。", "𠀋𡈽𡌛"):  # the last: rare kanji, byte fallback only
        assert tok.decode(tok.encode(text)) == text
    # Both languages are in the validation split: the end of each book is held out.
    val = np.fromfile(run / "data" / "val_000.bin", dtype=np.uint16)
    val_text = tok.decode(val.tolist())
    assert re.search(r"[\u3040-\u30ff]", val_text) and re.search(r"[A-Za-z]{4}", val_text)

    cli("train", run, "--config", config, *shrunk(steps=4, every=4))
    lm = scratchlm.load(run)
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", lm.generate("吾輩は", max_new_tokens=12, seed=1))
    out = tmp_path / "ja-en.gguf"
    cli("export", run, "--format", "gguf", "--out", out, "--dtype", "q8_0")
    reader = gguf.GGUFReader(out)
    fields = reader.fields
    model_kind = bytes(fields["tokenizer.ggml.model"].parts[-1]).decode()
    assert model_kind == "plamo2"  # llama.cpp's Unigram with byte fallback (see README: Export)
    assert len(fields["tokenizer.ggml.tokens"].data) == tok.vocab_size


def test_japanese_english_recipe_asks_for_a_32k_unigram_with_byte_fallback_coverage():
    values = recipe(ROOT / "configs" / "japanese-english.yaml")
    assert values["tokenizer"] == {"kind": "unigram", "vocab_size": 32000, "character_coverage": 0.9995}
    assert values["model"]["flavour"] == "gpt2"


# ---------------------------------------------------------------- 3. keyword-filtered Wikipedia


def test_wiki_keyword_recipe_keeps_matching_articles_and_exports_to_transformers(tmp_path, one_thread):
    transformers = pytest.importorskip("transformers")
    config, run = ROOT / "configs" / "wiki-keyword.yaml", tmp_path / "famicom"
    keyword = recipe(config)["data"]["include"][0]
    assert keyword == "ファミコン"
    dump = wiki_jsonl(tmp_path / "jawiki.jsonl", keyword)
    cli("prepare", run, "--config", config, "--input", dump, "--tokenizer.vocab-size", "500",
        "--data.min-chars", "100")  # fmt: skip
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["report"]["documents_kept"] == 24 and manifest["report"]["dropped_not_included"] == 24
    tok = Tokenizer.load(run / "tokenizer")
    ids = np.concatenate([np.fromfile(p, dtype=np.uint16) for p in sorted((run / "data").glob("*.bin"))])
    starts = np.flatnonzero(ids == tok.bos_id)  # every document starts with <|bos|>
    docs = [tok.decode(d.tolist()) for d in np.split(ids, starts) if d.size]
    assert len(docs) == 24 and all(keyword in d and "別の話題" not in d for d in docs)

    cli("train", run, "--config", config, *shrunk(steps=4, every=4))
    lm = scratchlm.load(run)
    greedy = lm.generate("ファミコンは", max_new_tokens=10, temperature=0)
    out = tmp_path / "famicom-hf"
    cli("export", run, "--format", "hf", "--out", out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    prompt = [tok.bos_id, *tok.encode("ファミコンは")]
    theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10)[0, len(prompt) :]
    assert hf_tok.decode(theirs, skip_special_tokens=True) == greedy


# ---------------------------------------------------------------- 4. the Python package, book style


def page_code(name: str) -> str:
    """The ```python blocks of a recipe page, joined: the code a reader copies."""
    text = (PAGES / name).read_text(encoding="utf-8")
    return "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))


def test_python_page_runs_as_written_at_smoke_scale(tmp_path, monkeypatch, capsys, one_thread):
    code = page_code("python-api.md")
    # The page's sizes and lengths, shrunk; each replacement must apply, so an edited page fails here
    # instead of silently running something else.
    small = {
        "max_steps=200,": "max_steps=8,",
        "eval_interval=50,": "eval_interval=4,",
        "warmup_steps=20,": "warmup_steps=2,",
        "n_layer=12, n_head=12, n_embd=768": "n_layer=1, n_head=2, n_embd=32",
        "max_new_tokens=300": "max_new_tokens=5",
        '"../shared/data/tinyshakespeare.txt"': repr(str(tmp_path / "input.txt")),
    }
    for old, new in small.items():
        assert old in code, old
        code = code.replace(old, new)
    clean_text = clean(read_text(bundled_corpus()))[:30_000]
    (tmp_path / "input.txt").write_text(clean_text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "python-api.md", "exec"), namespace)
    lm = namespace["lm"]
    assert isinstance(lm, scratchlm.lm.LoadedModel) and lm.step == 8
    assert 400_000 < namespace["laptop"].num_params() < 600_000  # "~0.5M parameters for a laptop"
    assert capsys.readouterr().out.strip()
    losses = [float(r["train_loss"]) for r in metrics(tmp_path / "runs" / "book") if r["train_loss"]]
    assert losses[-1] < losses[0]


def test_train_text_trains_continues_and_never_overwrites_a_trained_run(tmp_path, english, one_thread):
    text = english.read_text(encoding="utf-8")[:20_000]
    small = dict(n_layer=1, n_head=2, n_embd=32, block_size=32)
    steps = dict(max_steps=4, eval_interval=2, eval_batches=2, warmup_steps=1, batch_size=4, threads=1)
    run = tmp_path / "nb"
    lm = scratchlm.train_text(text, run, tokenizer=dict(kind="char"), model=scratchlm.GPTConfig(**small),
                              train=steps)  # fmt: skip
    assert lm.step == 4 and (run / "input.txt").read_text(encoding="utf-8") == text
    assert lm.config.model.n_embd == 32 and lm.tokenizer.kind == "char"
    a = lm.generate("Prince", max_new_tokens=8, temperature=0.8, top_k=5, seed=3)
    assert a == lm.generate("Prince", max_new_tokens=8, temperature=0.8, top_k=5, seed=3)

    # The same text again with more steps continues the run.
    assert scratchlm.train_text(text, run, train=dict(max_steps=6)).step == 6
    # Other text on a trained run is refused, and the run is left as it was.
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(UserError, match="fresh=True"):
        scratchlm.train_text(text[:10_000], run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    # fresh=True starts over and sets the earlier results aside.
    lm = scratchlm.train_text(text[:10_000], run, fresh=True, train=dict(max_steps=2))
    assert lm.step == 2 and len(list((run / "previous").iterdir())) == 1

    # A file by path (a Path, or a one-line str naming an existing file).
    char = dict(kind="char")
    assert scratchlm.train_text(english, tmp_path / "p", tokenizer=char, model=small, train=steps).step == 4
    assert Run.at(tmp_path / "p").load_config().data.inputs == [str(english)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(text="books/missing.txt"), "books/missing.txt: no such file"),
        (dict(train=dict(max_step=3)), "unknown key 'train.max_step' (did you mean 'max_steps'?)"),
        (dict(train=dict(max_steps=0)), "max_steps 0"),
        (dict(model=[1]), "expected a ModelConfig or a dict"),
        (dict(preset="huge"), "use one of gpt2, small, tiny"),
        (dict(text="   \n"), "the text is empty"),
    ],
)
def test_train_text_mistakes_are_one_line_user_errors_before_anything_is_written(tmp_path, kwargs, message):
    kwargs = {"text": "Some text.\nMore text.\n", **kwargs}
    with pytest.raises(UserError, match=re.escape(message)) as e:
        scratchlm.train_text(kwargs.pop("text"), tmp_path / "run", **kwargs)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_progress_bars_show_in_a_jupyter_kernel(monkeypatch):
    import tqdm.auto

    from scratchlm import common, trainer

    class Kernel:
        kernel = object()  # a ZMQ shell has a kernel; a terminal IPython has none

    fake = type(sys)("IPython")
    fake.get_ipython = lambda: Kernel()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not common.is_interactive()  # a log file: plain lines
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert common.in_notebook() and common.is_interactive()
    fake.get_ipython = lambda: type("TerminalShell", (), {})()
    assert not common.is_interactive()
    assert trainer.tqdm is tqdm.auto.tqdm  # the widget in Jupyter, text in a terminal


# ---------------------------------------------------------------- 5. Gutenberg → SFT → chat


def gutenberg_folder(root: Path) -> Path:
    """Three 'books' with Project Gutenberg headers and licences, in nested folders, plus a stub."""
    text = clean(read_text(bundled_corpus()))
    for i in range(3):
        book = root / f"{i // 2}" / f"pg{100 + i}.txt"
        book.parent.mkdir(parents=True, exist_ok=True)
        title = f"BOOK {i}"
        book.write_text(
            f"The Project Gutenberg EBook of {title}\n\nRelease Date: 2009\n\n"
            f"*** START OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\n"
            + text[20_000 * i : 20_000 * (i + 1)]
            + f"\n\n*** END OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\nProject Gutenberg licence text.\n",
            encoding="utf-8",
        )
    (root / "index.txt").write_text("A list of titles.\n", encoding="utf-8")
    return root


def sft_slices(tmp_path: Path) -> list[Path]:
    """The two instruction sets of configs/gutenberg-sft.yaml, 30 records each: Self-Instruct (bundled) and
    GSM8K (../shared/data if present, else records of the same shape)."""
    seed = tmp_path / "self_instruct.jsonl"
    with gzip.open(BUNDLED_SFT, "rt", encoding="utf-8") as f:
        seed.write_text("".join(f.readline() for _ in range(30)), encoding="utf-8")
    gsm = tmp_path / "gsm8k.jsonl"
    if (SHARED_DATA / "gsm8k_train.jsonl").is_file():
        with open(SHARED_DATA / "gsm8k_train.jsonl", encoding="utf-8") as f:
            gsm.write_text("".join(f.readline() for _ in range(30)), encoding="utf-8")
    else:
        rows = [
            {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
            for i in range(30)
        ]
        gsm.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return [seed, gsm]


def test_gutenberg_recipe_pretrains_on_a_folder_then_sft_on_mixed_sets_then_chats(
    tmp_path, monkeypatch, capsys, one_thread
):
    from scratchlm.data.sft import read_conversations

    pre, tune = ROOT / "configs" / "gutenberg-pretrain.yaml", ROOT / "configs" / "gutenberg-sft.yaml"
    base, chat = tmp_path / "books", tmp_path / "books-chat"
    books = gutenberg_folder(tmp_path / "gutenberg")
    cli("prepare", base, "--config", pre, "--input", books, "--tokenizer.vocab-size", "500")
    manifest = json.loads((base / "data" / "manifest.json").read_text())
    report = manifest["report"]
    assert report["documents_kept"] == 3 and report["dropped_too_short"] == 1  # the stub, by min_chars
    assert report["gutenberg_chars"] > 0
    tok = Tokenizer.load(base / "tokenizer")
    train_ids = np.fromfile(base / "data" / "train_000.bin", dtype=np.uint16)
    assert "Gutenberg" not in tok.decode(train_ids.tolist())
    # Context 128: the SFT conversations must fit (a longer last reply is skipped, not cut).
    cli("train", base, "--config", pre, *shrunk(steps=6, every=3), "--model.block-size", "128")
    assert Run.at(base).load_config().model.flavour == "llama"

    sets = sft_slices(tmp_path)
    fields = recipe(tune)["sft"]
    conversations = read_conversations(
        sets, prompt_field=fields["prompt_field"], response_field=fields["response_field"]
    )
    assert len(conversations) == 60  # both sets, each read in its own layout
    inputs = [a for s in sets for a in ("--input", s)]
    cli("sft", chat, "--from", base, "--config", tune, *inputs, "--sft.epochs", "0", "--train.max-steps", "4",
        "--train.eval-interval", "2", "--train.eval-batches", "1", "--sft.check-prompts", "1",
        "--sft.check-tokens", "4", "--train.threads", "1")  # fmt: skip
    saved = Run.at(chat).load_config()
    assert saved.train.lr == recipe(tune)["train"]["lr"] and saved.sft.base == str(base)
    assert all(math.isfinite(v) for v in val_losses(chat))
    stats = json.loads((chat / "sft_data.json").read_text())
    assert stats["train"]["conversations"] + stats["val"]["conversations"] == 60  # 10% held out
    assert stats["train"]["kept"] >= 10  # the rest: last reply longer than the 128-token context

    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 2?\n"))
    capsys.readouterr()
    cli("chat", chat, "--temperature", "0", "--max-new-tokens", "6")
    assert len(capsys.readouterr().out.strip().splitlines()) == 1  # one reply for the one question


# ---------------------------------------------------------------- the pages


def test_every_recipe_page_names_existing_configs_and_the_readme_lists_every_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = sorted(PAGES.glob("*.md"))
    assert len(pages) >= 6
    for page in pages:
        assert f"docs/recipes/{page.name}" in readme, f"README's recipe index lacks {page.name}"
        for named in re.findall(r"configs/([\w.-]+\.yaml)", page.read_text(encoding="utf-8")):
            assert (ROOT / "configs" / named).is_file(), f"{page.name} names configs/{named}: missing"
