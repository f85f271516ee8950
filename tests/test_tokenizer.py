"""Tokenizers: exact round trips, fixed special ids, save/load, parity with transformers, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.common import UserError
from scratchlm.config import RunConfig, TokenizerConfig
from scratchlm.data.corpus import bundled_corpus, clean, read_text
from scratchlm.run import Run
from scratchlm.tokenizer import SPECIALS, Tokenizer, split_for_batch, train_tokenizer

from .conftest import SHARED_DATA

KINDS = ["unigram", "bpe", "bytelevel", "char"]
VOCAB = 2000

# Used when ../shared/data is absent, so the Japanese checks never skip.
JA_FALLBACK = (
    "\u3000吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n"
    "\u3000東京の空は今日も青く、駅の前には人が多い。私はコーヒーを飲みながら本を読んだ。\n"
    "\u3000「明日は雨が降るでしょうか」と彼女は言った。１２３４５６７８９０、ＡＢＣ。\n"
) * 40

NASTY = [
    "",
    " ",
    "  leading and trailing  ",
    "runs     of\t\ttabs  and   spaces",
    "windows\r\nnewlines\r\n",
    "\n\n\nblank lines\n\n",
    "吾輩は猫である。名前はまだ無い。",
    "emoji 😀👍🏽 and flags 🇯🇵 and zwj 👩‍👩‍👧",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937",
    "control \x00 \x01 \x07 \x1b[31m \x7f \u200b \ufeff",
    "<|eos|>",
    "a <|bos|><|user|> b <|end|>",
    "literal \u2581 sentencepiece space \u2581\u2581",
    "digits 1234567890 3.14159 1,000,000",
    "rare 𠮷 ꙮ 𓀀 \U0010fffd",
    "\u3000全角スペース\u3000ｶﾀｶﾅ",
    "'s 've 'll don't",
    "<0x41> <0xE3> <unk> ▁<0x0A>",  # the spelling of byte and unknown tokens, as text
]


def _english() -> str:
    return clean(read_text(bundled_corpus()))[:60_000]


def _japanese() -> str:
    path = SHARED_DATA / "soseki_wagahai_neko.txt"
    return path.read_text(encoding="utf-8")[2_000:22_000] if path.is_file() else JA_FALLBACK


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return [_english(), _japanese()]


@pytest.fixture(scope="session")
def saved(tmp_path_factory, corpus) -> dict[str, object]:
    """Each kind trained once on English + Japanese and saved; maps kind → folder."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind in KINDS:
        tok = train_tokenizer(iter(corpus), TokenizerConfig(kind=kind, vocab_size=VOCAB))
        tok.save(root / kind)
        out[kind] = root / kind
    return out


@pytest.fixture(scope="session")
def loaded(saved) -> dict[str, Tokenizer]:
    return {kind: Tokenizer.load(folder) for kind, folder in saved.items()}


@pytest.fixture(params=KINDS)
def tok(request, loaded) -> Tokenizer:
    return loaded[request.param]


def test_nasty_strings_round_trip(tok):
    for s in NASTY:
        assert tok.decode(tok.encode(s)) == s, (tok.kind, s)


# Any text, plus strings built from the pieces most likely to break a round trip.
TRICKY = [" ", "  ", "\n", "\r\n", "\t", "\u2581", "a", "猫", "😀", "<|eos|>", "\u0301", "\x00", "1"]


# Corpora that each lack something the text may hold: a SentencePiece vocabulary trained without a
# single space once decoded "JIS X 0213" as "JIS▁X▁0213".
NARROW = {
    "no spaces": lambda: _english()[:20_000].replace(" ", ""),
    "no digits": lambda: re.sub("[0-9]", "", _english()[:20_000]),
    "no ASCII": lambda: JA_FALLBACK.replace("\n", ""),
}
NARROW_VOCAB = 346  # room for each corpus's ~80 characters, yet small enough for 4.5k Japanese ones


@pytest.fixture(scope="session")
def narrow() -> dict[tuple[str, str], Tokenizer]:
    """Each kind trained on each narrow corpus; maps (kind, corpus name) → tokenizer."""
    texts = {name: make() for name, make in NARROW.items()}
    return {
        (kind, name): train_tokenizer([text], TokenizerConfig(kind=kind, vocab_size=NARROW_VOCAB))
        for kind in KINDS
        for name, text in texts.items()
    }


@pytest.mark.parametrize("trained_on", ["English + Japanese", *NARROW])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80) | st.lists(st.sampled_from(TRICKY), max_size=30).map("".join))
def test_any_text_round_trips(loaded, narrow, kind, trained_on, text):
    tok = loaded[kind] if trained_on not in NARROW else narrow[kind, trained_on]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_tokenizer_trained_without_spaces_keeps_them(narrow, kind, tmp_path):
    from transformers import AutoTokenizer

    tok = narrow[kind, "no ASCII"]
    for text in ["JIS X 0213", "  two  spaces ", "a \u2581 b", *NASTY]:
        assert tok.decode(tok.encode(text)) == text, text
    if kind in ("unigram", "bpe"):  # a space is its own piece, not three byte tokens
        assert [tok.piece(i) for i in tok.encode(" ")] == ["\u2581"]
    tok.save(tmp_path)  # the Hugging Face twin gives the same ids, so exports agree
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf.encode("JIS X 0213, 吾輩", add_special_tokens=False) == tok.encode("JIS X 0213, 吾輩")


def test_special_ids_are_fixed_and_special_text_stays_text(tok):
    assert tok.special_ids == {name: i for i, name in enumerate(SPECIALS)}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    plain = tok.encode("hi <|eos|> there")
    assert not set(plain) & set(range(len(SPECIALS)))
    assert tok.decode(plain) == "hi <|eos|> there"
    special = tok.encode("hi <|eos|> there", allow_special=True)
    assert special.count(tok.eos_id) == 1
    assert tok.decode(special) == "hi  there"  # specials decode to nothing
    assert tok.encode("x", bos=True)[0] == tok.bos_id


def test_token_bytes_sum_to_decoded_length(tok, corpus):
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,) and tb[: len(SPECIALS)].sum() == 0
    for text in NASTY + [corpus[0][:5000], corpus[1][:3000]]:
        ids = tok.encode(text)
        assert int(tb[ids].sum()) == len(tok.decode(ids).encode("utf-8"))


def test_save_load_keeps_ids_and_hash(tok, saved, corpus, tmp_path):
    folder = saved[tok.kind]
    meta = json.loads((folder / "scratchlm_tokenizer.json").read_text())
    assert meta["kind"] == tok.kind and meta["vocab_size"] == tok.vocab_size == (
        VOCAB if tok.kind != "char" else meta["vocab_size"]
    )
    assert meta["hash"] == tok.hash and meta["special_ids"]["<|eos|>"] == 1
    assert meta["corpus_chars"] == sum(len(d) for d in corpus) and len(meta["corpus_hash"]) == 16
    native = "tokenizer.model" if tok.kind in ("unigram", "bpe") else "tokenizer.json"
    for name in (native, "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file()
    tok.save(tmp_path / "copy")
    again = Tokenizer.load(tmp_path / "copy")
    assert again.hash == tok.hash and again.encode(corpus[1][:2000]) == tok.encode(corpus[1][:2000])


def test_hash_changes_with_the_tokenizer(corpus):
    a = train_tokenizer(corpus, TokenizerConfig(kind="bytelevel", vocab_size=600))
    b = train_tokenizer(corpus, TokenizerConfig(kind="bytelevel", vocab_size=700))
    c = train_tokenizer(corpus, TokenizerConfig(kind="bytelevel", vocab_size=600))
    assert a.hash != b.hash and a.hash == c.hash


def _paragraphs(corpus: list[str]) -> list[str]:
    en = [p for p in corpus[0].split("\n\n") if p.strip()][:150]
    ja = [p for p in corpus[1].split("\n") if p.strip()][:150]
    return en + ja


def test_transformers_gives_the_same_ids(tok, saved, corpus):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(saved[tok.kind])
    probes = [s for s in NASTY if "\u2581" not in s and "<|" not in s] + [
        "\nnew line first",
        "   three leading spaces",
        "year 1812, 100,000 men",
        "rare kanji 𠮷 and ꙮ go to bytes",
    ]
    for text in _paragraphs(corpus) + probes:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, (tok.kind, text[:80])
        assert hf.decode(ids) == text
    # Special-token text: transformers matches it as the special id, like allow_special=True.
    assert hf.encode("a<|eos|>b", add_special_tokens=False) == tok.encode("a<|eos|>b", allow_special=True)
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id and hf.bos_token_id == tok.bos_id


def test_sentencepiece_byte_fallback_is_exercised(saved):
    tok = Tokenizer.load(saved["unigram"])
    ids = tok.encode("𠮷")  # a character outside the corpus
    assert tok.fallback_mask()[ids].all() and len(ids) == 4


def test_encode_batch_equals_encode_on_long_documents(tok, corpus):
    long_doc = (corpus[0] + "\n" + corpus[1]) * 3  # 3+ pieces with or without ../shared/data
    assert len(list(split_for_batch(long_doc))) > 2  # it really is cut
    texts = [long_doc, "", "short", corpus[1][:500]]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_training_streams_any_iterable(corpus):
    def gen():
        yield from corpus

    a = train_tokenizer(gen(), TokenizerConfig(kind="bpe", vocab_size=VOCAB))
    b = train_tokenizer(list(corpus), TokenizerConfig(kind="bpe", vocab_size=VOCAB))
    assert a.hash == b.hash and a.meta["corpus_hash"] == b.meta["corpus_hash"]


def test_char_kind_keeps_the_most_frequent_characters(corpus):
    tok = train_tokenizer(corpus, TokenizerConfig(kind="char", vocab_size=len(SPECIALS) + 256 + 30))
    assert tok.vocab_size == len(SPECIALS) + 256 + 30
    assert len(tok.encode("the")) == 3  # frequent letters are single tokens
    assert tok.decode(tok.encode("吾輩 😀")) == "吾輩 😀"  # the rest falls back to bytes


def test_nfkc_normalization_is_an_option(corpus, tmp_path):
    from transformers import AutoTokenizer

    for kind in ("unigram", "bytelevel"):
        tok = train_tokenizer(corpus, TokenizerConfig(kind=kind, vocab_size=VOCAB, normalization="nfkc"))
        text = "ｶﾀｶﾅ and ＡＢＣ１２３ 吾輩"
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFKC", text)
        tok.save(tmp_path / kind)
        hf = AutoTokenizer.from_pretrained(tmp_path / kind)
        for t in [text] + _paragraphs(corpus)[::10]:
            assert hf.encode(t, add_special_tokens=False) == tok.encode(t)


# ---- bad input ----


@pytest.mark.parametrize("kind", KINDS)
def test_empty_corpus_is_a_user_error(kind):
    with pytest.raises(UserError, match="corpus is empty"):
        train_tokenizer(["", "  \n\n", ""], TokenizerConfig(kind=kind))
    with pytest.raises(UserError, match="corpus is empty"):
        train_tokenizer(iter([]), TokenizerConfig(kind=kind))


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_below_specials_plus_bytes_is_refused(kind):
    with pytest.raises(UserError, match=r"--tokenizer.vocab_size 200 is too small.*256"):
        train_tokenizer(["some text"], TokenizerConfig(kind=kind, vocab_size=200))


@pytest.mark.parametrize("kind", ["unigram", "bpe", "bytelevel"])
def test_corpus_too_small_for_the_vocab_suggests_a_size(kind):
    with pytest.raises(UserError, match=r"too large for this corpus.*try (\d+) or less") as e:
        train_tokenizer(["the cat sat on the mat. " * 20], TokenizerConfig(kind=kind, vocab_size=5000))
    suggested = int(e.value.args[0].split("try ")[1].split()[0])
    tok = train_tokenizer(["the cat sat on the mat. " * 20], TokenizerConfig(kind=kind, vocab_size=suggested))
    assert tok.vocab_size == suggested


def test_too_few_ids_for_the_characters_names_coverage():
    with pytest.raises(UserError, match=r"character_coverage"):
        train_tokenizer(
            [JA_FALLBACK, "".join(chr(0x4E00 + i) for i in range(600))], TokenizerConfig(vocab_size=300)
        )


# ---- command line ----


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "scratchlm", *args], capture_output=True, text=True)


def test_cli_train_encode_decode_stats(tmp_path):
    text = tmp_path / "mixed.txt"
    text.write_text(_english()[:30_000] + "\n" + JA_FALLBACK, encoding="utf-8")
    run = tmp_path / "run"
    out = _cli(
        "tokenizer",
        "train",
        str(run),
        "--input",
        str(text),
        "--tokenizer.kind",
        "bytelevel",
        "--tokenizer.vocab-size",
        "700",
    )
    assert out.returncode == 0, out.stderr
    assert Tokenizer.load(run / "tokenizer").kind == "bytelevel"
    enc = _cli("tokenizer", "encode", str(run), "Hello 吾輩\n")
    assert enc.returncode == 0, enc.stderr
    ids = enc.stdout.split()
    assert [int(i) for i in ids] == Tokenizer.load(run / "tokenizer").encode("Hello 吾輩\n")
    dec = _cli("tokenizer", "decode", str(run), *ids)
    assert dec.returncode == 0 and dec.stdout == "Hello 吾輩\n"
    stats = _cli("tokenizer", "stats", str(run), "--text", str(text))
    assert stats.returncode == 0, stats.stderr
    for word in ("tokens", "bytes/token", "chars/token", "byte-fallback", "longest"):
        assert word in stats.stdout
    # prepare reuses the run's tokenizer instead of training a SentencePiece one
    prep = _cli("prepare", str(run), "--input", str(text))
    assert prep.returncode == 0 and "using the run's tokenizer (bytelevel" in prep.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["tokenizer", "train", "{run}", "--input", "{empty}"], "empty"),
        (["tokenizer", "train", "{run}", "--input", "{text}", "--tokenizer.vocab-size", "100"], "too small"),
        (
            ["tokenizer", "train", "{run}", "--input", "{text}", "--tokenizer.kind", "bpe"],
            "--tokenizer.vocab_size 4096 is too large for this corpus: try",
        ),
        (["tokenizer", "stats", "{trained}", "--text", "{missing}"], "missing.txt"),
        (["tokenizer", "encode", "{run}", "hello"], "no tokenizer here"),
        (["tokenizer", "decode", "{trained}", "5", "999999"], "999999"),
        (["tokenizer", "decode", "{trained}", "five"], "five"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, saved, args, expected):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "text.txt").write_text("hello world " * 50)
    trained = tmp_path / "trained"
    (trained / "tokenizer").mkdir(parents=True)
    for f in saved["bpe"].iterdir():
        (trained / "tokenizer" / f.name).write_bytes(f.read_bytes())
    names = {"run": tmp_path / "run", "empty": tmp_path / "empty.txt", "text": tmp_path / "text.txt"}
    names["missing"] = tmp_path / "missing.txt"
    names["trained"] = trained
    out = _cli(*[a.format(**names) for a in args])
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in out.stderr


def test_fallback_mask_marks_only_byte_tokens(tok):
    mask = tok.fallback_mask()
    assert mask.dtype == np.bool_ and mask.shape == (tok.vocab_size,)
    assert mask.sum() == (0 if tok.kind == "bytelevel" else 256)


def test_stats_counts_tokens_bytes_and_byte_fallback(saved, tmp_path, capsys):
    from scratchlm.commands.tokenizer import stats

    (tmp_path / "run" / "tokenizer").mkdir(parents=True)
    for f in saved["unigram"].iterdir():
        (tmp_path / "run" / "tokenizer" / f.name).write_bytes(f.read_bytes())
    text = "吾輩は猫である。𠮷 and ꙮ are rare.\nPrince Andrew smiled."  # cleaning leaves it as it is
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = stats(tmp_path / "run", text=str(tmp_path / "t.txt"), top=5)
    tok = Tokenizer.load(saved["unigram"])
    ids = tok.encode(text)
    assert (
        result["tokens"] == len(ids)
        and result["bytes"] == len(text.encode())
        and result["chars"] == len(text)
    )
    assert result["bytes_per_token"] == pytest.approx(len(text.encode()) / len(ids))
    n_fallback = int(tok.fallback_mask()[ids].sum())
    assert n_fallback >= 7 and result["byte_fallback_rate"] == pytest.approx(n_fallback / len(ids))
    lengths = [len(piece.encode()) for _, piece in result["longest"]]
    assert len(lengths) == 5 and lengths == sorted(lengths, reverse=True)
    assert (
        lengths[0] == tok.token_bytes().max()
        and not tok.fallback_mask()[[i for i, _ in result["longest"]]].any()
    )
    out = capsys.readouterr().out
    assert f"{result['bytes_per_token']:.3f}" in out and "5 longest tokens" in out


def test_stats_of_a_file_clean_it_with_the_runs_own_data_settings(saved, tmp_path):
    """A run prepared with --data.unwrap false keeps a wrapped file's line ends in its numbers; a run with
    the default joins them, as its prepare did."""
    from scratchlm.commands.tokenizer import stats

    paragraph = "Prince Andrew looked at the sky above him and thought of nothing at all for a while. " * 4
    text = "\n\n".join(textwrap.fill(paragraph.strip(), 60) for _ in range(8))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    tok = Tokenizer.load(saved["unigram"])
    counts = {}
    for unwrap in (True, False):
        run = Run.at(tmp_path / f"unwrap-{unwrap}")
        (run.root / "tokenizer").mkdir(parents=True)
        for f in saved["unigram"].iterdir():
            (run.root / "tokenizer" / f.name).write_bytes(f.read_bytes())
        cfg = RunConfig()
        cfg.data.unwrap = unwrap
        run.save_config(cfg)
        counts[unwrap] = stats(run.root, text=str(tmp_path / "t.txt"))["tokens"]
    joined = "\n\n".join(paragraph.strip() for _ in range(8))
    assert counts == {True: len(tok.encode(joined)), False: len(tok.encode(text))}
    assert counts[True] != counts[False]


def test_cli_tokenizer_train_takes_a_recipe(tmp_path):
    recipe = tmp_path / "char.yaml"
    recipe.write_text("tokenizer:\n  kind: char\nmodel:\n  n_layer: 3\ntrain:\n  max_steps: 5\n")
    text = tmp_path / "t.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    out = _cli("tokenizer", "train", str(tmp_path / "run"), "--config", str(recipe), "--input", str(text))
    assert out.returncode == 0, out.stderr
    tok = Tokenizer.load(tmp_path / "run" / "tokenizer")
    n_chars = len(set(text.read_text()))
    assert tok.kind == "char" and tok.vocab_size == len(SPECIALS) + 256 + n_chars
    assert len(tok.encode("Before we")) == 9


def test_prepare_with_a_char_tokenizer_gives_a_small_vocabulary(tmp_path, capsys):
    """The Tiny Shakespeare recipe's setting: one token per character seen, plus specials and bytes."""
    from scratchlm.commands.prepare import prepare
    from scratchlm.config import RunConfig
    from scratchlm.data.shards import open_split

    text = _english()[:20_000]
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    cfg = RunConfig()
    cfg.data.inputs = [str(tmp_path / "book.txt")]
    cfg.tokenizer.kind = "char"
    prepare(tmp_path / "run", cfg)
    tok = Tokenizer.load(tmp_path / "run" / "tokenizer")
    assert tok.kind == "char" and tok.vocab_size == len(SPECIALS) + 256 + len(set(text))
    # The caller's settings stay as given (resolved once, frozen); the run's config.yaml has the size.
    from scratchlm.run import Run

    assert Run.at(tmp_path / "run").load_config().model.vocab_size == tok.vocab_size
    # It reports the size it got, not the cap it was given (4096).
    out = capsys.readouterr().out
    assert f"the char tokenizer has {tok.vocab_size} tokens" in out and "tokenizer of 4096" not in out
    assert "document(s)" not in out and "of 1 document;" in out
    train, val = open_split(tmp_path / "run" / "data", "train"), open_split(tmp_path / "run" / "data", "val")
    ids = np.concatenate([np.asarray(a) for a in train.arrays + val.arrays])
    # + <|bos|> before the book (train) and <|eos|> after each split (its val tail continues it)
    assert ids.size == len(text) + 3 and not tok.fallback_mask()[ids].any()


def test_encode_batch_shows_a_progress_bar_on_large_inputs_only(loaded, corpus, monkeypatch, capsys):
    import scratchlm.tokenizer.base as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "is_interactive", lambda: True)
    monkeypatch.setattr(tokenizer_module, "_BAR_CHARS", 10_000)
    tok = loaded["bytelevel"]
    texts = [corpus[0][:20_000], corpus[1][:5_000]]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert "tokenizing" in capsys.readouterr().err
    monkeypatch.setattr(tokenizer_module, "_BAR_CHARS", 1 << 30)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert "tokenizing" not in capsys.readouterr().err
