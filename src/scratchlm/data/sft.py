"""Instruction data: JSONL files → conversations → packed (B, T) training batches with a loss mask.

Shapes of a line, detected per file from its first record (or forced with `shape`):
  messages           {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  alpaca             {"instruction": str, "input": str (optional), "output": str}
  self_instruct      {"instruction": str, "instances": [{"input": str, "output": str}, ...]}
                     (the Self-Instruct seed tasks; one conversation per instance)
  prompt_completion  {"prompt": str, "completion": str}
  fields             any two fields named by prompt_field / response_field (GSM8K: question / answer)
Files may be gzipped (.gz) and of different shapes; blank lines are skipped.

Packing, measured (unigram tokenizer of 4096 trained on War and Peace; the shipped Self-Instruct set
renders to 169 tokens on average, GSM8K train to 258):
- One conversation per row, padded, fills a row of T=512 to 33% (Self-Instruct) / 50% (GSM8K), of T=1024
  to 18% / 25%: most of every step would be padding.
- Packing several per row: next-fit in shuffled order fills 76% / 74% at T=512; first-fit over the last
  64 open rows (pack_rows) 97% / 93%, and 96% / 96% at T=1024.
- Keeping packed conversations from seeing each other (document masking) needs a block-diagonal mask, and
  scaled_dot_product_attention with an explicit mask leaves the causal fast path: attention forward +
  backward took 2.1x as long as is_causal on CPU (B=4, 4 heads, T=1024, head 64, one thread; 1.03x at
  T=512), plus position ids that restart per conversation in the model.
- So: packed rows, plain causal attention, each conversation opened by <|bos|> as pretraining documents
  are (pretraining's windows cross document boundaries the same way, so the model has learned that
  <|bos|> starts afresh). A conversation is never split across rows, and the loss covers only reply
  tokens, so no reply is scored on a neighbour's text. The trainer and model need no change.
Targets that are not trained on are -1, the ignore_index of model.py's loss (and of loader.py's padding).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..chat_template import render_many, validate
from ..common import UserError, atomic_write_text, plural, rank0_print

SHAPES = ("auto", "messages", "alpaca", "self_instruct", "prompt_completion", "fields")
IGNORE = -1  # model.py: cross_entropy(..., ignore_index=-1)


class Conversation(NamedTuple):
    messages: list[dict]
    source: str  # "file:line", for error messages


def bundled_sft() -> Path:
    """The Self-Instruct seed tasks (175 human-written instructions, Apache-2.0), gzipped in the package."""
    return Path(str(resources.files("scratchlm") / "assets" / "self_instruct_seed_tasks.jsonl.gz"))


# ---------------------------------------------------------------- reading
def read_conversations(
    paths: Sequence[str | Path],
    *,
    shape: str = "auto",
    prompt_field: str | None = None,
    response_field: str | None = None,
    system_prompt: str | None = None,
) -> list[Conversation]:
    """Every conversation of every file, in file order. Mistakes in a file are UserErrors naming file:line.

    prompt_field/response_field map other field names to the user and assistant turns (used where a
    file's first record has prompt_field, or everywhere with shape="fields"). system_prompt, if given,
    opens every conversation that has no system message of its own.
    """
    if shape not in SHAPES:
        raise UserError(f"--sft.shape {shape!r}: choose one of {', '.join(SHAPES)}")
    if (prompt_field is None) != (response_field is None):
        raise UserError("--sft.prompt_field and --sft.response_field go together: give both or neither")
    if shape == "fields" and prompt_field is None:
        raise UserError("--sft.shape fields needs --sft.prompt_field and --sft.response_field")
    if not paths:
        raise UserError("no SFT data: give one or more JSONL files")
    out: list[Conversation] = []
    for path in _files(paths):
        n = len(out)
        out.extend(_read_file(path, shape, (prompt_field, response_field), system_prompt))
        if len(out) == n:
            raise UserError(f"{path}: no examples in this file")
    return out


def _files(paths: Sequence[str | Path]) -> list[Path]:
    """The JSONL files named, a folder standing for the .jsonl / .jsonl.gz files inside it (sorted)."""
    files = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))
        if not found:
            raise UserError(f"{path}: a folder with no .jsonl file in it; give JSONL files of conversations")
        files.extend(found)
    return files


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    # Bytes decoded line by line, so a decoding error names its line (a text stream decodes ahead).
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{path}:{lineno}: not UTF-8 text") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a BOM, as Windows editors write
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise UserError(
                        f"{path}:{lineno}: a line must be a JSON object, not {type(rec).__name__}"
                    )
                yield lineno, rec
        except (gzip.BadGzipFile, EOFError) as e:
            raise UserError(f"{path}: not a readable gzip file ({e})") from None


def _detect(rec: dict, fields: tuple[str | None, str | None], where: str) -> str:
    if fields[0] is not None and fields[0] in rec:
        return "fields"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and "instances" in rec:
        return "self_instruct"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and "completion" in rec:
        return "prompt_completion"
    names = ", ".join(map(repr, rec)) or "none"
    raise UserError(
        f"{where}: cannot tell the shape of this file from its fields ({names}); "
        "name the prompt and reply fields (--sft.prompt_field, --sft.response_field) or give --sft.shape"
    )


def _read_file(path: Path, shape: str, fields, system_prompt: str | None) -> Iterator[Conversation]:
    file_shape = None if shape == "auto" else shape
    for lineno, rec in _records(path):
        where = f"{path}:{lineno}"
        file_shape = file_shape or _detect(rec, fields, where)
        for messages in _to_messages(rec, file_shape, fields, where):
            first = messages[0] if messages else None
            if system_prompt is not None and isinstance(first, dict) and first.get("role") != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            try:
                validate(messages)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            yield Conversation(messages, where)


def _text(rec: dict, field: str, shape: str, where: str, default: str | None = None) -> str:
    if field not in rec and default is not None:
        return default
    if field not in rec:
        raise UserError(f"{where}: no {field!r} field (a {shape} line)")
    value = rec[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} is {type(value).__name__}, not a string")
    return value


def _user_turn(instruction: str, input_: str) -> str:
    # Alpaca's instruction and optional input, as one user message separated by a blank line.
    return f"{instruction}\n\n{input_}" if input_.strip() else instruction


def _to_messages(rec: dict, shape: str, fields, where: str) -> list[list[dict]]:
    def pair(user: str, assistant: str) -> list[dict]:
        return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]

    if shape == "messages":
        messages = rec.get("messages")
        if not isinstance(messages, list):
            what = "no 'messages' field" if messages is None else f"'messages' is {type(messages).__name__}"
            raise UserError(f"{where}: {what}, expected a list of {{role, content}} objects")
        return [[dict(m) if isinstance(m, dict) else m for m in messages]]
    if shape == "alpaca":
        user = _user_turn(_text(rec, "instruction", shape, where), _text(rec, "input", shape, where, ""))
        return [pair(user, _text(rec, "output", shape, where))]
    if shape == "self_instruct":
        instruction, instances = _text(rec, "instruction", shape, where), rec.get("instances")
        if not isinstance(instances, list) or not instances:
            raise UserError(
                f"{where}: field 'instances' must be a non-empty list of {{input, output}} objects"
            )
        out = []
        for k, inst in enumerate(instances):
            at = f"{where} (instance {k + 1})"
            if not isinstance(inst, dict):
                raise UserError(
                    f"{at}: an instance is {type(inst).__name__}, not an {{input, output}} object"
                )
            user = _user_turn(instruction, _text(inst, "input", shape, at, ""))
            out.append(pair(user, _text(inst, "output", shape, at)))
        return out
    if shape == "prompt_completion":
        return [pair(_text(rec, "prompt", shape, where), _text(rec, "completion", shape, where))]
    prompt_field, response_field = fields  # "fields"
    shape = "--sft.prompt_field/--sft.response_field"
    return [pair(_text(rec, prompt_field, shape, where), _text(rec, response_field, shape, where))]


# ---------------------------------------------------------------- tokenizing
@dataclass
class PackStats:
    conversations: int = 0
    """Conversations read."""
    kept: int = 0
    """Conversations in the training rows (truncated ones included)."""
    truncated: int = 0
    """Longer than the context: the prompt side was cut, the last reply kept whole."""
    skipped: int = 0
    """The last reply alone does not fit the context: left out."""
    tokens: int = 0
    """Tokens of the kept conversations (after truncation)."""
    trained_tokens: int = 0
    """Of those, the ones the loss covers (replies and their <|end|>)."""


class Examples:
    """Rendered conversations cut to fit one context window: flat token and loss-mask arrays + offsets."""

    def __init__(self, tokens: np.ndarray, trained: np.ndarray, offsets: np.ndarray, stats: PackStats):
        self.tokens, self.trained, self.offsets, self.stats = tokens, trained, offsets, stats
        self.lengths = np.diff(offsets)
        h = hashlib.sha256(offsets.astype(np.int64).tobytes())
        h.update(tokens.astype(np.int64).tobytes())
        h.update(trained.tobytes())
        self.fingerprint = h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.lengths)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.tokens[lo:hi], self.trained[lo:hi]


def encode_conversations(conversations: Sequence[Conversation], tokenizer, block_size: int) -> Examples:
    """Render every conversation and fit it into block_size + 1 tokens (inputs plus the shifted target).

    A longer one loses tokens from its start, the prompt side, so the last reply is kept whole and still
    follows its <|assistant|> tag; one whose last reply (+ <|end|>) exceeds block_size is skipped.
    """
    window = block_size + 1
    stats = PackStats(conversations=len(conversations))
    assistant = tokenizer.special_ids["<|assistant|>"]
    tokens, trained, offsets = [], [], [0]
    for ids, mask in render_many([c.messages for c in conversations], tokenizer):
        if len(ids) > window:
            reply = ids[::-1].index(assistant)  # tokens after the last <|assistant|>: reply + <|end|>
            if reply > block_size:
                stats.skipped += 1
                continue
            ids, mask = ids[-window:], mask[-window:]
            stats.truncated += 1
        tokens.append(np.asarray(ids, dtype=np.int64))
        trained.append(np.asarray(mask, dtype=bool))
        offsets.append(offsets[-1] + len(ids))
    stats.kept = len(tokens)
    if not tokens:
        raise UserError(
            f"every one of the {stats.conversations} conversations has a last reply longer than the context "
            f"of {block_size} tokens; give shorter examples, or tune a base trained with a longer context"
        )
    flat_mask = np.concatenate(trained)
    stats.tokens, stats.trained_tokens = int(offsets[-1]), int(flat_mask.sum())
    return Examples(np.concatenate(tokens), flat_mask, np.asarray(offsets, dtype=np.int64), stats)


# ---------------------------------------------------------------- packing and batches
def pack_rows(lengths: np.ndarray, order: Sequence[int], window: int, open_rows: int = 64) -> list[list[int]]:
    """First-fit packing in `order`: each conversation joins the oldest of the last `open_rows` rows with
    room for it, else starts a row; the oldest row is emitted when there are more. Rows stay in about the
    shuffled order, and fill 93-97% of the window where next-fit filled 74-86% (module docstring)."""
    done: list[list[int]] = []
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(int(i))
                room[r] -= n
                break
        else:
            rows.append([int(i)])
            room.append(window - n)
            if len(rows) > open_rows:
                done.append(rows.pop(0))
                room.pop(0)
    return done + rows


def _row_tensors(examples: Examples, rows: Sequence[list[int]], block_size: int, pad_id: int):
    """(B, T) inputs and targets; targets are IGNORE where the loss mask is false and after the end."""
    x = torch.full((len(rows), block_size + 1), pad_id, dtype=torch.long)
    y = torch.full((len(rows), block_size + 1), IGNORE, dtype=torch.long)
    for r, row in enumerate(rows):
        ids, mask = zip(*(examples.get(i) for i in row), strict=True)
        ids, mask = torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(mask))
        x[r, : ids.numel()] = ids
        y[r, : ids.numel()] = torch.where(mask, ids, IGNORE)
    return x[:, :-1], y[:, 1:]  # y[t] is the token after x[t], scored only where it is a reply token


class PackedBatches:
    """Training batches of packed conversations, an epoch at a time in a seeded shuffled order.

    The interface of loader.EpochWindows (next_batch, state_dict, load_state_dict), so the trainer
    takes either. Epoch e packs the conversations in the order permutation(seed, e); the state is the
    epoch and the next row in it, so a resumed run draws exactly the batches it would have, also across
    an epoch boundary (tested). Batches are global; the trainer gives each rank its slice.
    """

    def __init__(self, examples: Examples, batch_size: int, block_size: int, seed: int, pad_id: int = 2):
        self.examples, self.batch_size, self.block_size = examples, batch_size, block_size
        self.seed, self.pad_id = seed, pad_id
        self.epoch, self.row, self.batches = 0, 0, 0
        self.rows = self._epoch_rows(0)

    def _epoch_rows(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        return pack_rows(self.examples.lengths, order, self.block_size + 1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < self.batch_size:
            if self.row == len(self.rows):
                self.epoch, self.row = self.epoch + 1, 0
                self.rows = self._epoch_rows(self.epoch)
            take = self.rows[self.row : self.row + self.batch_size - len(rows)]
            rows.extend(take)
            self.row += len(take)
        self.batches += 1
        return _row_tensors(self.examples, rows, self.block_size, self.pad_id)

    def rows_per_epoch(self) -> int:
        return len(self.rows)

    def fill(self) -> float:
        """Share of the current epoch's row tokens that are conversation, not padding."""
        return float(self.examples.lengths.sum()) / (len(self.rows) * (self.block_size + 1))

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "row": self.row,
            "batches": self.batches,
            "seed": self.seed,
            "data": self.examples.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("data") != self.examples.fingerprint:
            raise UserError(
                "the SFT data or tokenizer changed since this checkpoint was saved (its packed examples "
                "differ), so resuming would not continue the same data order; give the same files and "
                "settings, or start a new run"
            )
        self.seed, self.epoch, self.row = int(state["seed"]), int(state["epoch"]), int(state["row"])
        self.batches = int(state.get("batches", 0))
        self.rows = self._epoch_rows(self.epoch)


def sequential_batches(
    examples: Examples, batch_size: int, block_size: int, max_batches: int | None = None, pad_id: int = 2
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches: conversations packed in their given order, each scored once."""
    rows = pack_rows(examples.lengths, np.arange(len(examples)), block_size + 1)
    for n, start in enumerate(range(0, len(rows), batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        yield _row_tensors(examples, rows[start : start + batch_size], block_size, pad_id)


def describe(stats: PackStats) -> str:
    """One line for the log."""
    d = asdict(stats)
    return (
        f"SFT data: {plural(d['conversations'], 'training conversation')}, {d['kept']:,} kept "
        f"({d['truncated']:,} truncated from the prompt side, {d['skipped']:,} skipped: last reply longer "
        f"than the context); {plural(d['tokens'], 'token')}, {d['trained_tokens']:,} trained on"
    )


# ---------------------------------------------------------------- a run's split
def split_conversations(cfg, run_root: Path) -> tuple[list[Conversation], list[Conversation]]:
    """The training and validation conversations of an SFT run (cfg: its RunConfig): cfg.sft.val_inputs, or
    a seeded cfg.sft.val_fraction of the inputs held out. The same split for training and `scratchlm eval`."""
    sc = cfg.sft
    options = dict(
        shape=sc.shape,
        prompt_field=sc.prompt_field,
        response_field=sc.response_field,
        system_prompt=sc.system_prompt,
    )
    train = read_conversations([_local(p, cfg, run_root) for p in sc.inputs] or [bundled_sft()], **options)
    if sc.val_inputs:
        return train, read_conversations([_local(p, cfg, run_root) for p in sc.val_inputs], **options)
    n_val = round(len(train) * sc.val_fraction)
    if sc.val_fraction > 0 and len(train) >= 2:
        n_val = min(max(1, n_val), len(train) - 1)
    if n_val == 0:
        rank0_print("no validation conversations (--sft.val_fraction 0): validating on the training ones")
        return train, train
    order = np.random.default_rng(cfg.train.seed).permutation(len(train))
    held = set(order[:n_val].tolist())
    return [c for i, c in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def describe_held_out(cfg, train: Sequence[Conversation], val: Sequence[Conversation]) -> str:
    """Which conversations split_conversations validated on, in words, for eval's output and report."""
    sc = cfg.sft
    if sc.val_inputs:
        return f"the {plural(len(val), 'conversation')} of --val-input {', '.join(sc.val_inputs)}"
    if val is train:
        return f"the {plural(len(val), 'training conversation')} (--sft.val-fraction 0: none held out)"
    return (
        f"the {len(val)} of {plural(len(train) + len(val), 'conversation')} held out, never trained on "
        f"(--sft.val-fraction {sc.val_fraction:g}, shuffled by --train.seed {cfg.train.seed})"
    )


def _local(spec: str, cfg, run_root: Path) -> str:
    """A file path as given; hf:OWNER/NAME is read from the hub once into RUN/sft_inputs/ as JSONL."""
    if not spec.startswith("hf:"):
        return spec
    name = spec[3:]
    dest = Path(run_root) / "sft_inputs" / (name.replace("/", "__") + ".jsonl")
    if not dest.is_file():
        try:
            import datasets
        except ImportError:
            raise UserError(f"--input {spec} needs the datasets package: pip install datasets") from None
        try:
            rows = datasets.load_dataset(name, cfg.data.hf_config or None, split=cfg.data.hf_split)
            lines = "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows)
        except Exception as e:  # no network, no such dataset, no such split: one line naming the input
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"--input {spec}: cannot load it from the Hugging Face hub ({first})") from None
        atomic_write_text(dest, lines)
    return str(dest)
