"""prepare with worker processes (--data.workers): the same shards and manifest as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scratchlm.commands.prepare import prepare
from scratchlm.common import UserError
from scratchlm.data import parallel
from scratchlm.data.corpus import bundled_corpus, read_text


@pytest.fixture
def small_units(monkeypatch):
    """Units of 4 KB and text files over 32 KB streamed by the parent, so a tiny corpus spans many units."""
    monkeypatch.setattr(parallel, "UNIT_BYTES", 1 << 12)
    monkeypatch.setattr(parallel, "INLINE_BYTES", 1 << 15)


def corpus(root: Path) -> Path:
    """Many short JSONL documents (duplicates, blank lines, one too short, CRLF), a small and a large text
    file and an empty one, in one folder."""
    root.mkdir()
    book = read_text(bundled_corpus())
    paras = [p for p in book[:200_000].split("\n\n") if p.strip()]
    with open(root / "a.jsonl", "w", encoding="utf-8") as f:
        for i, p in enumerate(paras):
            f.write(json.dumps({"text": p if i % 9 else paras[0]}) + "\n" + ("\n" if i % 50 == 0 else ""))
        f.write(json.dumps({"text": "tiny"}) + "\n" + json.dumps({"text": "Ünï\r\ncödé  \n\n\n\nend"}) + "\n")
    (root / "b.txt").write_text("\n\n".join(paras[:40]), encoding="utf-8")
    (root / "c.txt").write_text(book[-100_000:])
    (root / "d.txt").write_bytes(b"")
    return root


@pytest.mark.parametrize("kind", ["unigram", "bytelevel"])
def test_shards_and_manifest_are_byte_identical_for_any_number_of_workers(tmp_path, small_units, kind):
    inputs = [str(corpus(tmp_path / "in"))]
    files = {}
    for workers in (1, 2, 3):
        run = tmp_path / f"run{workers}"
        data = dict(workers=workers, min_chars=10, shard_tokens=5_000)
        prepare(run, input=inputs, data=data, tokenizer=dict(kind=kind, vocab_size=500))
        files[workers] = {p.name: p.read_bytes() for p in sorted((run / "data").iterdir())}
    manifest = json.loads(files[1]["manifest.json"])
    assert len(manifest["splits"]["train"]) > 5 and manifest["report"]["dropped_duplicate"] > 5
    assert manifest["report"]["empty_files_skipped"] == 1 and manifest["split_mode"] == "whole documents"
    assert files[2] == files[1] and files[3] == files[1]


def test_a_few_documents_found_by_workers_hold_out_their_tails_as_one_process_does(tmp_path):
    (tmp_path / "few.jsonl").write_text(
        "".join(
            json.dumps({"text": f"Document {i}.\n\n" + "words and more words\n" * 200}) + "\n"
            for i in range(4)
        )
    )
    out = {}
    for workers in (1, 2):
        prepare(
            tmp_path / f"r{workers}",
            input=[str(tmp_path / "few.jsonl")],
            data=dict(workers=workers),
            tokenizer=dict(kind="char"),
        )
        out[workers] = {p.name: p.read_bytes() for p in (tmp_path / f"r{workers}" / "data").iterdir()}
    assert json.loads(out[1]["manifest.json"])["split_mode"] == "tail of each document"
    assert out[2] == out[1]


def test_bad_input_in_a_worker_is_one_line_naming_the_file_and_leaves_no_data(tmp_path, small_units):
    root = corpus(tmp_path / "in")
    (root / "z_bad.txt").write_bytes("latin-1: caf\xe9\n".encode("latin-1") * 100)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"z_bad\.txt: not valid utf-8 at byte offset 12; .*--data\.encoding"):
        # The tokenizer's sample ends before the bad file: the workers are the first to read it.
        prepare(
            run,
            input=[str(root)],
            data=dict(workers=2, tokenizer_sample_mb=0.01),
            tokenizer=dict(kind="char"),
        )
    assert sorted(p.name for p in (run / "data").iterdir()) == []  # no manifest, no shard, no temp file


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_bad_workers_value_is_a_one_line_error(tmp_path, value):
    out = subprocess.run(
        [sys.executable, "-m", "scratchlm", "prepare", str(tmp_path / "r"), "--data.workers", value],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "data.workers" in out.stderr and ">= 1" in out.stderr
