"""Writes the JSONL data of the local lm-eval tasks in this folder from the bundled book (War and Peace,
public domain), from text after the first 150,000 characters that tests/conftest.py's tiny run trains on.

    python tests/assets/lm_eval_tasks/make_data.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from scratchlm.data.corpus import bundled_corpus, clean, read_text

HERE = Path(__file__).parent
PUNCTUATION = ".,;:!?\u201d\u2019\"'"


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    found = re.findall(r"[A-Z][^.!?\"]{40,140}[.!?]", flat)
    return [s for s in found if len(s.split()) >= 9]


def write(name: str, records: list[dict]) -> None:
    path = HERE / "data" / f"{name}.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    text = clean(read_text(bundled_corpus()))
    rng = random.Random(0)
    pool = sentences(text[200_000:320_000])
    rng.shuffle(pool)
    picked, others = pool[:64], pool[64:]
    # wp_next: the sentence's own last five words against those of three other sentences.
    records = []
    for s in picked:
        words = s.split()
        choices = [" ".join(o.split()[-5:]) for o in rng.sample(others, 3)]
        label = rng.randrange(4)
        choices.insert(label, " ".join(words[-5:]))
        records.append({"context": " ".join(words[:-5]), "choices": choices, "label": label})
    write("wp_next_train", records[:16])
    write("wp_next", records[16:48])
    # wp_lastword: LAMBADA's shape, the last word after the rest of the sentence.
    write("wp_lastword", [{"text": s} for s in picked[:32]])
    # wp_complete: the next word, generated greedily.
    last = [s.split() for s in picked[32:48]]
    write("wp_complete", [{"context": " ".join(w[:-1]), "answer": w[-1].strip(PUNCTUATION)} for w in last])
    # wp_pages: paragraphs scored whole (rolling windows); some longer than a small model's context.
    paragraphs = [" ".join(p.split()) for p in text[330_000:360_000].split("\n\n") if len(p) > 200]
    write("wp_pages", [{"text": p} for p in paragraphs[:12]])


if __name__ == "__main__":
    main()
