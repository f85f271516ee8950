"""The data path: sources, cleaning steps and their report, selection, shards + manifest, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scratchlm.commands.prepare import prepare
from scratchlm.common import UserError
from scratchlm.config import DataConfig, RunConfig, TokenizerConfig
from scratchlm.data import sources
from scratchlm.data.clean import DocCleaner
from scratchlm.data.corpus import Corpus, bundled_corpus, clean, read_text
from scratchlm.data.shards import ShardWriter, open_split, read_manifest, token_dtype
from scratchlm.tokenizer import Tokenizer, train_tokenizer

from .conftest import shared_file

GUTENBERG = (
    "The Project Gutenberg EBook of Something\n\n*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\n"
    "{body}\n*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\nLicence text.\n"
)
DASHES = "-" * 55
AOZORA = (
    f"吾輩は猫である\n夏目漱石\n\n{DASHES}\n【テキスト中に現れる記号について】\n\n《》：ルビ\n{DASHES}\n\n"
    "［＃８字下げ］一［＃「一」は中見出し］\n\n"
    "　吾輩《わがはい》は猫である。書生という人間中で一番｜獰悪《どうあく》な種族であった。"
    "※［＃「言＋墟のつくり」、第4水準2-88-74］\n\n\n"
    "底本：「夏目漱石全集1」ちくま文庫、筑摩書房\n入力：柴田卓治\n"
)


def docs(cfg: DataConfig) -> tuple[list[str], Counter]:
    report = Counter()
    return ["".join(d.pieces()) for d in Corpus(cfg).documents(report)], report


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    text = clean(read_text(bundled_corpus()))[:60_000] + AOZORA
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer([text], TokenizerConfig(vocab_size=600)).save(path)
    return path


def prepared(run: Path, tokenizer_dir: Path, inputs: list, **data) -> dict:
    """prepare() with a ready tokenizer (so no test pays for training one)."""
    shutil.copytree(tokenizer_dir, run / "tokenizer", dirs_exist_ok=True)
    cfg = RunConfig()
    cfg.data.inputs = [str(i) for i in inputs]
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return prepare(run, cfg)


def split_docs(run: Path, split: str, opens: bool = True) -> list[str]:
    """The split's documents as text. Each is stored as <|bos|> text <|eos|>; a val piece held out from
    the tail of a document (opens=False) continues it, so it has no <|bos|>."""
    tok = Tokenizer.load(run / "tokenizer")
    ids = np.concatenate([a for a in open_split(run / "data", split, tok.hash).arrays]).tolist()
    assert ids[-1] == tok.eos_id  # every document ends with <|eos|>
    out, cur = [], []
    for i in ids:
        if i == tok.eos_id:
            assert (cur[:1] == [tok.bos_id]) == opens and tok.bos_id not in cur[1:], cur[:3]
            out.append(tok.decode(cur[1:] if opens else cur))
            cur = []
        else:
            cur.append(i)
    return out


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


# ---- cleaning ----


def test_gutenberg_header_and_footer_go_also_in_concatenated_books(tmp_path):
    path = tmp_path / "books.txt"
    path.write_text(GUTENBERG.format(body="First book.") + GUTENBERG.format(body="Second book."))
    (text,), report = docs(DataConfig(inputs=[str(path)]))
    assert text == "First book.\n\nSecond book."
    assert report["gutenberg_chars"] > 100
    (kept,), _ = docs(DataConfig(inputs=[str(path)], strip_gutenberg=False))
    assert kept.startswith("The Project Gutenberg EBook") and "Licence text." in kept


def test_aozora_markup_header_and_colophon_are_removed(tmp_path):
    path = tmp_path / "neko.txt"
    path.write_text(AOZORA, encoding="utf-8")
    (text,), report = docs(DataConfig(inputs=[str(path)]))
    assert text == "一\n\n　吾輩は猫である。書生という人間中で一番獰悪な種族であった。※"
    assert report["aozora_chars"] == len(AOZORA) - len(text) - report["whitespace_chars"]
    (raw,), _ = docs(DataConfig(inputs=[str(path)], aozora="off"))
    assert "《わがはい》" in raw and "底本" in raw


def test_aozora_shift_jis_file_needs_its_encoding(tmp_path):
    path = tmp_path / "neko_sjis.txt"
    path.write_bytes(AOZORA.replace("\n", "\r\n").encode("cp932"))
    (text,), _ = docs(DataConfig(inputs=[str(path)], encoding="cp932"))
    assert text.startswith("一\n\n　吾輩は猫である。") and "\r" not in text
    with pytest.raises(UserError, match=r"neko_sjis.txt: not valid utf-8 at byte offset \d+"):
        docs(DataConfig(inputs=[str(path)]))


def test_the_real_aozora_file_comes_out_clean():
    (text,), report = docs(DataConfig(inputs=[str(shared_file("soseki_wagahai_neko.txt"))]))
    for mark in ("《", "》", "［＃", "｜", "底本", "テキスト中に現れる記号", "-----"):
        assert mark not in text
    assert text.startswith("一\n\n　吾輩は猫である。名前はまだ無い。")
    assert text.endswith("南無阿弥陀仏南無阿弥陀仏。ありがたいありがたい。")
    assert report["aozora_chars"] > 50_000


def test_unicode_normalization_nfc_and_nfkc():
    text = "Cafe\u0301 ＡＢＣ①"
    assert DocCleaner(DataConfig()).feed(text) == "Caf\u00e9 ＡＢＣ①"
    assert DocCleaner(DataConfig(unicode="NFKC")).feed(text) == "Caf\u00e9 ABC1"
    assert DocCleaner(DataConfig(unicode="none")).feed(text) == text


def test_whitespace_normalization_across_pieces():
    cleaner = DocCleaner(DataConfig())
    pieces = ["\n\na  \r\n\r\n", "\n\n\nb\t\n", "c \n\n", "\n", "a line cut ", "in two\n"]
    assert "".join(cleaner.feed(p) for p in pieces) == "a\n\nb\nc\n\na line cut in two"
    raw = DocCleaner(DataConfig(normalize_whitespace=False))
    assert "".join(raw.feed(p) for p in pieces) == "".join(pieces)


def _wrapped_book(count: int = 30) -> tuple[str, str]:
    """A book wrapped at 70 columns as Project Gutenberg's are, with a verse and a list of full lines in
    it, and the same book with one line a paragraph."""
    words = "the old prince said that Natasha had gone to the ball with Pierre and Sonya".split()
    paras = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40 + i % 30)) for i in range(count)]
    verse = "    Fetching water clear and sweet,\n    Stop, dear maiden, I entreat."
    items = [textwrap.shorten(f"{mark} " + " ".join(words * 2), 69) for mark in ("1.", "2.", "-", "-", "•")]
    parts = [*paras[:10], verse, "\n".join(items), *paras[10:]]
    wrapped = "\n\n".join(p if p in (verse, parts[11]) else textwrap.fill(p, 70) for p in parts)
    return wrapped, "\n\n".join(parts)


def test_a_text_wrapped_at_a_fixed_width_gets_its_paragraphs_back_on_one_line():
    wrapped, paragraphs = _wrapped_book()
    report = Counter()
    cleaner = DocCleaner(DataConfig(), report)
    # Pieces end after a newline, as files are read; the first one decides (a file's is 64 KiB).
    cut = [m.end() for m in re.finditer("\n", wrapped)][40::7]
    pieces = [wrapped[a:b] for a, b in zip([0, *cut], [*cut, len(wrapped)], strict=True)]
    assert "".join(cleaner.feed(p) for p in pieces) == paragraphs  # the verse and list keep their lines
    assert len(paragraphs) == len(wrapped)
    assert report["unwrapped_lines"] == wrapped.count("\n") - paragraphs.count("\n")
    assert DocCleaner(DataConfig(unwrap=False)).feed(wrapped) == wrapped


def test_verse_short_texts_and_east_asian_lines_keep_their_newlines():
    lines = ["First Citizen:", "Before we proceed any further, hear me speak.", "All:", "Speak, speak."]
    verse = "\n".join(lines * 20)
    assert clean(verse) == verse
    assert clean("A short note\nwrapped once at a narrow width, and then\nonce more.") == (
        "A short note\nwrapped once at a narrow width, and then\nonce more."
    )
    japanese = "\n".join(["吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"] * 40)
    assert clean(japanese) == japanese


def _line_ends_inside_paragraphs(text: str) -> int:
    lines = text.split("\n")
    return sum(1 for a, b in zip(lines, lines[1:], strict=False) if a and b)


def test_the_bundled_book_is_unwrapped_to_one_line_a_paragraph_at_the_same_length():
    book = read_text(bundled_corpus())
    joined, kept = clean(book), DocCleaner(DataConfig(unwrap=False)).feed(book)
    assert len(joined) == len(kept)
    assert _line_ends_inside_paragraphs(kept) > 39_000
    assert _line_ends_inside_paragraphs(joined) < 100  # what stays: indented verse and notes


# ---- reading ----


def test_chunked_decoding_is_exact_and_reports_offsets_past_the_first_chunk(tmp_path):
    n = sources.CHUNK_BYTES
    good = tmp_path / "good.txt"
    text = "a" * (n - 1) + "é" + "b\n" * 10 + "x" * 3 * n  # "é" straddles the first chunk boundary
    good.write_text(text, encoding="utf-8")
    assert "".join(sources.text_pieces(good)) == text
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"z" * (n + 5) + b"\xff tail")
    with pytest.raises(UserError, match=rf"bad.txt: not valid utf-8 at byte offset {n + 5};"):
        list(sources.text_pieces(bad))
    (replaced,), report = docs(DataConfig(inputs=[str(bad)], errors="replace"))
    assert replaced == "z" * (n + 5) + "\ufffd tail"


def test_a_huge_single_line_is_read_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_PIECE_CHARS", 1000)
    path = tmp_path / "one_line.txt.gz"
    line = ("e\u0301" * 7 + "xyz") * 30_000  # no newline at all, combining marks everywhere
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(line)
    pieces = list(sources.text_pieces(path))
    assert "".join(pieces) == line
    assert len(pieces) > 100 and max(len(p) for p in pieces) <= 1000 + sources.CHUNK_BYTES
    assert not any(p[0] == "\u0301" for p in pieces)  # never cut between a letter and its accent
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("ab " * 5000)  # cut mid-line, at spaces: cleaning must not eat them
    assert docs(DataConfig(inputs=[str(spaced)]))[0] == ["ab " * 5000]
    record = "x" * 2500 + "\n" + "y" * 700
    assert [len(p) for p in sources.split_text(record)] == [1000, 1000, 501, 700]
    assert "".join(sources.split_text(line)) == line and "".join(sources.split_text(record)) == record


@pytest.mark.slow
def test_a_200_mb_single_line_prepares_in_bounded_memory(tmp_path, tokenizer_dir):
    path = tmp_path / "one_line.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(200):
            f.write(f"chunk {i} of a line that never ends, " * 27_000)  # ~1 MB, no newline
    shutil.copytree(tokenizer_dir, tmp_path / "run" / "tokenizer")
    # VmHWM is this process image's own peak; ru_maxrss would carry over the forking pytest's peak across exec
    # (Linux keeps it), which reached 400 MB in a full CI session whatever prepare did.
    child = (
        "import re, sys; from scratchlm.cli import main; rc = main(sys.argv[1:]); "
        "status = open('/proc/self/status').read(); "
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) // 1024); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", child, "prepare", str(tmp_path / "run"), "--input", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    peak_mb = int(out.stdout.split()[-1])
    assert peak_mb < 250, peak_mb  # the line is ~200 MB of text (~100 MB measured; reading it whole: >400)


def test_jsonl_with_dotted_field_and_bad_lines(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"meta": {"body": "one"}}, {"meta": {"body": "two"}}])
    assert docs(DataConfig(inputs=[str(path)], text_field="meta.body"))[0] == ["one", "two"]
    with pytest.raises(UserError, match=r"a.jsonl:1: no field 'text' \(it has: meta\)"):
        docs(DataConfig(inputs=[str(path)]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:3: not valid JSON"):
        docs(DataConfig(inputs=[str(bad)]))
    nums = write_jsonl(tmp_path / "n.jsonl", [{"text": 3}])
    with pytest.raises(UserError, match=r"n.jsonl:1: field 'text' is int, not text"):
        docs(DataConfig(inputs=[str(nums)]))


def test_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"id": [1, 2], "article": [{"body": "ファミコン"}, {"body": "B"}]}), path)
    assert docs(DataConfig(inputs=[str(path)], text_field="article.body"))[0] == ["ファミコン", "B"]
    with pytest.raises(UserError, match=r"wiki.parquet: no column 'text' \(columns: id, article\)"):
        docs(DataConfig(inputs=[str(path)]))


def test_hugging_face_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["alpha", "beta", "gamma"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert docs(DataConfig(inputs=[str(tmp_path / "ds")]))[0] == ["alpha", "beta", "gamma"]
    assert docs(DataConfig(inputs=[str(tmp_path / "dd")], hf_split="test"))[0] == ["beta"]
    with pytest.raises(UserError, match=r"no split 'validation' \(splits: train, test\)"):
        docs(DataConfig(inputs=[str(tmp_path / "dd")], hf_split="validation"))


def test_hub_dataset_without_network_or_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(UserError, match="needs the datasets package"):
        docs(DataConfig(inputs=["hf:someone/corpus"]))
    monkeypatch.undo()
    pytest.importorskip("datasets")
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = run_cli("prepare", str(tmp_path / "run"), "--input", "hf:someone/not-a-dataset", env=offline)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "hf:someone/not-a-dataset" in out.stderr


def test_directories_globs_and_skipped_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("A text.")
    (tmp_path / "d" / "sub" / "b.md").write_text("B text.")
    (tmp_path / "d" / "sub" / "c.txt.gz").write_bytes(gzip.compress(b"C text."))
    (tmp_path / "d" / "blob.txt").write_bytes(b"\x00\x01" * 50)
    (tmp_path / "d" / "empty.txt").write_text("")
    (tmp_path / "d" / "ignored.bin").write_text("not read")
    texts, report = docs(DataConfig(inputs=[str(tmp_path / "d")]))
    assert texts == ["A text.", "B text.", "C text."]
    assert report["binary_files_skipped"] == 1 and report["empty_files_skipped"] == 1
    with pytest.raises(UserError, match=r"blob.txt: the file looks like a binary file"):
        docs(DataConfig(inputs=[str(tmp_path / "d")], strict=True))
    assert docs(DataConfig(inputs=[str(tmp_path / "d" / "**" / "*.md")]))[0] == ["B text."]
    with pytest.raises(UserError, match="no such file or directory"):
        docs(DataConfig(inputs=[str(tmp_path / "nope.txt")]))


def test_filters_length_limits_and_dedup_are_reported(tmp_path):
    records = [
        {"text": "任天堂のファミコンの話"},
        {"text": "任天堂のファミコンの話"},  # exact duplicate
        {"text": "ファミコンと広告の話"},  # excluded
        {"text": "関係のない話"},  # not included
        {"text": "ファミ"},  # too short
        {"text": "スーパーファミコン" * 20},  # too long
    ]
    path = write_jsonl(tmp_path / "wiki.jsonl", records)
    cfg = DataConfig(inputs=[str(path)], include=["ファミコン"], exclude=["広告"], min_chars=5, max_chars=100)
    texts, report = docs(cfg)
    assert texts == ["任天堂のファミコンの話"]
    assert report["documents_read"] == 6 and report["documents_kept"] == 1
    for key in ("duplicate", "excluded", "not_included", "too_short", "too_long"):
        assert report[f"dropped_{key}"] == 1, key
    regex = DataConfig(inputs=[str(path)], include=[r"^任天堂|^関係"], regex=True, dedup=False)
    assert docs(regex)[0] == [records[0]["text"]] * 2 + [records[3]["text"]]
    with pytest.raises(UserError, match="not a valid regular expression"):
        docs(DataConfig(inputs=[str(path)], include=["("], regex=True))


def test_big_documents_are_cleaned_again_instead_of_kept_in_memory(tmp_path, monkeypatch):
    import scratchlm.data.corpus as corpus

    monkeypatch.setattr(corpus, "CACHE_CHARS", 100)
    path = tmp_path / "big.txt"
    path.write_text(GUTENBERG.format(body="Some  \nlines.\n\n\n" * 100))
    (doc,) = Corpus(DataConfig(inputs=[str(path)])).documents(Counter())
    assert doc.cached is None
    expected = "\n".join(["Some\nlines.\n"] * 100).rstrip("\n")
    assert "".join(doc.pieces()) == expected and doc.chars == len(expected)


# ---- shards and prepare ----


def test_prepare_splits_documents_and_the_shards_round_trip(tmp_path, tokenizer_dir):
    records = [{"text": f"Document number {i}.\nIt says {'la ' * (i % 7)}and ends."} for i in range(60)]
    path = write_jsonl(tmp_path / "docs.jsonl", records)
    manifest = prepared(tmp_path / "run", tokenizer_dir, [path], val_fraction=0.2, shard_tokens=300)
    train, val = split_docs(tmp_path / "run", "train"), split_docs(tmp_path / "run", "val")
    cleaned = [clean(r["text"]) for r in records]
    assert sorted(train + val) == sorted(cleaned) and not set(train) & set(val)
    assert 4 <= len(val) <= 20 and manifest["documents"] == {"train": len(train), "val": len(val)}
    assert manifest["dtype"] == "uint16" and manifest["tokenizer_hash"] == Tokenizer.load(tokenizer_dir).hash
    assert len(manifest["splits"]["train"]) > 2  # several shards of at most 300 tokens
    for entry in manifest["splits"]["train"] + manifest["splits"]["val"]:
        data = (tmp_path / "run" / "data" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == 2 * entry["tokens"]
        assert entry["tokens"] <= 300
    assert manifest["report"]["documents_kept"] == 60 and manifest["sources"][0]["kept"] == 60
    # The same seed gives the same split; another seed another one.
    again = prepared(tmp_path / "run2", tokenizer_dir, [path], val_fraction=0.2, shard_tokens=300)
    assert again["splits"] == manifest["splits"]
    other = prepared(tmp_path / "run3", tokenizer_dir, [path], val_fraction=0.2, shard_tokens=300, seed=7)
    assert other["splits"] != manifest["splits"]


def test_few_books_hold_out_the_end_of_each(tmp_path, tokenizer_dir):
    book = clean(read_text(bundled_corpus()))[:40_000]
    path = tmp_path / "book.txt"
    path.write_text(book)
    prepared(tmp_path / "run", tokenizer_dir, [path], val_fraction=0.1)
    (train,), (val,) = split_docs(tmp_path / "run", "train"), split_docs(tmp_path / "run", "val", opens=False)
    assert train + val == book and 0.05 < len(val) / len(book) < 0.15
    assert train.endswith("\n\n")  # cut at a paragraph break


def test_shards_match_the_naive_encoding(tmp_path, tokenizer_dir, monkeypatch):
    """Streaming in 64 KiB pieces gives exactly the tokens of one encode() of the whole text."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)
    book = clean(read_text(bundled_corpus()))[:50_000]
    tok = Tokenizer.load(tokenizer_dir)
    path_txt = tmp_path / "book.txt"
    path_txt.write_text(book)
    prepared(tmp_path / "run", tokenizer_dir, [path_txt], val_fraction=0.5)
    data = tmp_path / "run" / "data"
    ids = np.concatenate([open_split(data, "train").arrays[0], open_split(data, "val").arrays[0]])
    assert tok.decode(ids) == book
    naive = tok.encode(book)
    # Only the tokens around the train/val cut may differ from the naive encoding.
    streamed = [i for i in ids.tolist() if i not in (tok.bos_id, tok.eos_id)]
    assert abs(len(streamed) - len(naive)) <= 2 and streamed[:1000] == naive[:1000]


def test_token_dtype_and_uint32_shards(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint32), shard_tokens=4)
    writer.write(np.array([70_000, 1, 2], dtype=np.int64))
    writer.write(np.array([3, 4, 5, 99_999], dtype=np.int64))
    files = writer.finish()
    assert [f["tokens"] for f in files] == [4, 3]
    got = np.concatenate([np.memmap(tmp_path / f["file"], dtype=np.uint32, mode="r") for f in files])
    assert got.tolist() == [70_000, 1, 2, 3, 4, 5, 99_999]


def test_interrupted_prepare_leaves_nothing_to_train_on_and_a_rerun_redoes_it(tmp_path, tokenizer_dir):
    run = tmp_path / "run"
    good = write_jsonl(tmp_path / "a.jsonl", [{"text": f"doc {i} " * 20} for i in range(40)])
    prepared(run, tokenizer_dir, [good], shard_tokens=200)
    before = sorted(p.name for p in (run / "data").iterdir())
    assert len(before) > 5
    bad = tmp_path / "b.jsonl"
    bad.write_text(good.read_text() * 2 + "not json\n")  # fails after several shards were written
    with pytest.raises(UserError, match=r"b.jsonl:81: not valid JSON"):
        prepared(run, tokenizer_dir, [bad], shard_tokens=200)
    leftovers = sorted(p.name for p in (run / "data").iterdir())
    assert "manifest.json" not in leftovers and not [n for n in leftovers if n.endswith(".tmp")]
    with pytest.raises(UserError, match="run `scratchlm prepare` first"):
        open_split(run / "data", "train")
    # Running it again (on good input) redoes the data cleanly: only listed shards remain.
    manifest = prepared(run, tokenizer_dir, [good], shard_tokens=500)
    listed = {e["file"] for s in manifest["splits"].values() for e in s} | {"manifest.json"}
    assert {p.name for p in (run / "data").iterdir()} == listed


def test_training_refuses_shards_of_another_tokenizer_or_damaged_ones(tmp_path, tokenizer_dir):
    run = tmp_path / "run"
    prepared(
        run, tokenizer_dir, [write_jsonl(tmp_path / "a.jsonl", [{"text": f"d{i} " * 30} for i in range(20)])]
    )
    manifest = read_manifest(run / "data")
    assert open_split(run / "data", "train", manifest["tokenizer_hash"]).total > 0
    with pytest.raises(UserError, match="shards were made with another tokenizer"):
        open_split(run / "data", "train", "0123456789abcdef")
    shard = run / "data" / manifest["splits"]["train"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match="not the size in the manifest"):
        open_split(run / "data", "train")


def test_few_records_hold_out_the_end_of_each_and_an_empty_val_split_is_an_error(tmp_path, tokenizer_dir):
    records = [{"text": f"Record {i}.\n\n" + "Some more words. " * 10} for i in range(3)]
    path = write_jsonl(tmp_path / "three.jsonl", records)
    manifest = prepared(tmp_path / "run", tokenizer_dir, [path], val_fraction=0.2)
    assert manifest["split_mode"] == "tail of each document"
    train, val = split_docs(tmp_path / "run", "train"), split_docs(tmp_path / "run", "val", opens=False)
    assert [t + v for t, v in zip(train, val, strict=True)] == [clean(r["text"]) for r in records]
    many = write_jsonl(tmp_path / "twelve.jsonl", [{"text": f"doc {i}"} for i in range(12)])
    with pytest.raises(UserError, match="no document went to the val split.*raise --data.val_fraction"):
        prepared(tmp_path / "run2", tokenizer_dir, [many], val_fraction=0.001)


def test_cli_prepare_with_filters_and_bad_jsonl(tmp_path, tokenizer_dir):
    records = [{"t": f"記事 {i} ファミコン" if i % 2 else f"記事 {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "w.jsonl", records)
    shutil.copytree(tokenizer_dir, tmp_path / "run" / "tokenizer")
    out = run_cli(
        "prepare", str(tmp_path / "run"), "--input", str(path), "--data.text-field", "t",
        "--data.include", '["ファミコン"]', "--data.val-fraction", "0.25",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "documents dropped: no --data.include match" in out.stdout and "kept 20 of 40" in out.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": "x"}\n{"t": \n')
    out = run_cli("prepare", str(tmp_path / "run2"), "--input", str(bad), "--data.text_field", "t")
    assert out.returncode == 2 and out.stderr.strip() == f"scratchlm: error: {bad}:2: not valid JSON " + (
        "(Expecting value); write one JSON object a line"
    )


@pytest.mark.parametrize("name", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin", ".."])
def test_shard_names_in_the_manifest_stay_in_the_data_folder(tmp_path, name):
    """A manifest edited by hand or copied from elsewhere must not make training read files outside."""
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    (tmp_path / "run" / "secret.bin").write_bytes(b"\0" * 8)  # the right size: only the name gives it away
    split = [{"file": name, "tokens": 4}]
    manifest = {"tokenizer_hash": "h", "dtype": "uint16", "splits": {"train": split, "val": split}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=rf"data/manifest.json: shard '{re.escape(name)}' is not a file in "):
        open_split(data, "train")
    (data / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="manifest.json: not valid JSON"):
        open_split(data, "train")
