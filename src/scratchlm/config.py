"""Typed settings: the single source of truth for the CLI, YAML files and checkpoints.

Each dataclass is flat, and each field's docstring is its `--help` text (jsonargparse reads them).
`RunConfig` groups them; it is what `RUN/config.yaml` and every checkpoint hold.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

from .common import UserError

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


class SettingError(UserError):
    """A setting outside its allowed values. `name` is the field; callers that know where the value came
    from (a flag, a file) re-raise it with `named()` so the message points there."""

    def __init__(self, name: str, value: Any, rule: str):
        self.name, self.value, self.rule = name, value, rule
        shown = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        super().__init__(f"{name} {shown}: {rule}")

    def named(self, name: str) -> SettingError:
        return SettingError(name, self.value, self.rule)


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A field with its allowed range, checked whenever the dataclass is built (see `Checked`)."""
    bounds = tuple((op, v) for op, v in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if v is not None)
    return field(default=default, metadata={"bounds": bounds})


class FrozenError(AttributeError):
    """A resolved config was assigned to: settings are resolved once (settings.resolve), never rewritten."""


class Checked:
    """Checks each `bounded` field on construction: the one check behind flags, --config files, a run's
    saved config.yaml, checkpoints and the Python API. A config built by hand may be changed by assignment
    (settings.resolve rebuilds and checks it again); a resolved one is frozen and refuses assignment."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise FrozenError(
                f"{type(self).__name__}.{name}: resolved settings are frozen; use dataclasses.replace or "
                "pass the change to the command (e.g. train=dict(...))"
            )
        super().__setattr__(name, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            bounds = f.metadata.get("bounds")
            value = getattr(self, f.name)
            unset = (value is None and "None" in str(f.type)) or (value == "auto" and "auto" in str(f.type))
            if not bounds or unset:
                continue
            integer = str(f.type).startswith("int")
            if integer:
                ok = isinstance(value, int)
            else:
                ok = isinstance(value, (int, float)) and math.isfinite(value)
            if isinstance(value, bool) or not ok or not all(_OPS[op](value, v) for op, v in bounds):
                kind = "an integer" if integer else "a number"
                rule = " and ".join(f"{op} {v}" for op, v in bounds)
                raise SettingError(f.name, value, f"must be {kind} {rule}")


@dataclass
class DataConfig(Checked):
    """The corpus: where the text comes from and how it is cleaned, selected and split."""

    inputs: list[str] = field(default_factory=list)
    """Text, .gz, JSONL, Parquet, folders, globs, HF save_to_disk folders, hf:NAME; empty: bundled book."""
    val_fraction: float = bounded(0.05, gt=0, lt=1)
    """Share of the documents held out for validation (the end of each one when there are under 10)."""
    strip_gutenberg: bool = True
    """Remove the Project Gutenberg header and licence footer when present."""
    seed: int = bounded(1337, ge=0)
    """Seed of the train/val split."""
    text_field: str = "text"
    """Field holding the text in JSONL, Parquet and Hugging Face records; dotted for nested (a.b)."""
    hf_split: str = "train"
    """Split of a Hugging Face dataset (hub name or save_to_disk folder)."""
    hf_config: str = ""
    """Configuration (subset) of a Hugging Face hub dataset."""
    encoding: str = "utf-8"
    """Encoding of text files (e.g. cp932 for Shift_JIS Aozora Bunko files)."""
    errors: Literal["strict", "replace"] = "strict"
    """Undecodable bytes: strict stops with the file and byte offset; replace writes U+FFFD."""
    strict: bool = False
    """Refuse binary files and empty files found in folders instead of skipping and counting them."""
    aozora: Literal["auto", "on", "off"] = "auto"
    """Remove Aozora Bunko markup (ruby, notes, header, colophon); auto detects Aozora files."""
    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalization (NFKC also folds full-width letters and compatibility characters)."""
    normalize_whitespace: bool = True
    """CRLF to LF, no trailing spaces, at most one blank line in a row, no blank lines at the ends."""
    unwrap: bool = True
    """Join the lines that a fixed-width text broke inside its paragraphs (Project Gutenberg's ~70
    columns) when the document is wrapped so (most line ends fall where the next word would not fit);
    verse, lists, code and short lines keep their newlines. Works with normalize_whitespace on."""
    min_chars: int = bounded(1, ge=0)
    """Drop documents shorter than this many characters after cleaning."""
    max_chars: int = bounded(0, ge=0)
    """Drop documents longer than this many characters after cleaning (0: no limit)."""
    include: list[str] = field(default_factory=list)
    """Keep only documents containing one of these keywords (or regexes with --data.regex)."""
    exclude: list[str] = field(default_factory=list)
    """Drop documents containing any of these keywords (or regexes with --data.regex)."""
    regex: bool = False
    """Read include/exclude as regular expressions."""
    dedup: bool = True
    """Drop exact duplicate documents (after cleaning)."""
    tokenizer_sample_mb: float = bounded(32.0, gt=0)
    """The tokenizer is trained on the first this-many MB of cleaned text (memory stays bounded)."""
    shard_tokens: int = bounded(100_000_000, ge=1)
    """Tokens per shard file."""
    workers: int | Literal["auto"] = bounded("auto", ge=1)
    """Processes that read, clean and encode (auto: one per core, 1 for a few text files); the shards
    are the same whatever the number."""


@dataclass
class TokenizerConfig(Checked):
    """The tokenizer: its kind, vocabulary size and training options."""

    kind: Literal["unigram", "bpe", "bytelevel", "char"] = "unigram"
    """unigram/bpe: SentencePiece with byte fallback; bytelevel: GPT-2 style byte-level BPE; char: one
    token per character (unseen ones fall back to bytes). Every kind round-trips any text exactly."""
    vocab_size: int = bounded(4096, ge=1)
    """Vocabulary size, special tokens included (for char: the most characters kept, plus 256 bytes)."""
    character_coverage: float = bounded(0.9995, gt=0, le=1)
    """Share of characters covered by pieces; the rest fall back to bytes (0.9995 suits CJK)."""
    normalization: Literal["identity", "nfkc"] = "identity"
    """identity keeps text exactly; nfkc folds compatibility forms (full-width → half-width), so
    decode(encode(text)) gives the NFKC form of the text."""
    max_sentence_length: int = bounded(4192, ge=1)
    """SentencePiece: longest training line in bytes; longer lines are cut into pieces that fit."""
    input_sentence_size: int = bounded(2_000_000, ge=0)
    """SentencePiece: lines sampled from the corpus for training, bounding RAM on a large corpus."""


@dataclass
class ModelConfig(Checked):
    """The network: flavour, size and architecture options (saved with every checkpoint)."""

    flavour: Literal["gpt2", "llama"] = "gpt2"
    """gpt2: learned positions, LayerNorm, GELU. llama: RoPE, RMSNorm, SwiGLU, grouped-query attention."""
    vocab_size: int = bounded(4096, ge=1)
    """Tokenizer vocabulary size; set from the run's tokenizer by `train`."""
    block_size: int = bounded(128, ge=1)
    """Context length in tokens."""
    n_layer: int = bounded(4, ge=1)
    """Transformer blocks."""
    n_head: int = bounded(4, ge=1)
    """Attention (query) heads."""
    n_kv_head: int = bounded(0, ge=0)
    """Key/value heads for grouped-query attention (llama); 0 means n_head."""
    n_embd: int = bounded(128, ge=1)
    """Width of the residual stream."""
    mlp_hidden: int = bounded(0, ge=0)
    """MLP hidden width; 0 means 4 x n_embd (gpt2) or 8/3 x n_embd rounded up to 64 (llama)."""
    # Exact GELU by default, as nn.GELU and nanoGPT: ATen's tanh-GELU kernel is ~3x slower on this 2-core CPU
    # (1.47 vs 0.53 ms per (768 x 512) call, 2 threads): bench/train.py vs GPT2LMHeadModel went from 1.09x to
    # 1.18-1.20x with it (2 threads; equal at 1 thread). docs/benchmarks.md, issue 6.
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    """MLP activation of the gpt2 flavour: gelu (exact, erf; transformers' "gelu") or gelu_tanh (GPT-2's
    tanh approximation, transformers' "gelu_new", llama.cpp's GELU). llama uses SwiGLU and needs gelu."""
    dropout: float = bounded(0.0, ge=0, lt=1)
    """Dropout on attention, residual and embeddings (0 for short runs)."""
    bias: bool = True
    """Biases in linear layers and LayerNorms (GPT-2 has them; llama has none)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head."""
    rope_theta: float = bounded(10000.0, gt=0)
    """RoPE base (llama)."""
    qk_norm: bool = False
    """RMSNorm on queries and keys per head (llama)."""
    norm_eps: float = bounded(1e-5, gt=0)
    """Epsilon of LayerNorm / RMSNorm."""
    vocab_multiple: int = bounded(64, ge=1)
    """Pad the embedding and head to a multiple of this for fast matmuls; padding is never sampled."""

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def qkv_rows(self) -> list[int]:
        """The rows of attention's fused [q; k; v] projection, by part (k and v narrower under GQA)."""
        head_dim = self.n_embd // self.n_head
        return [self.n_head * head_dim, self.kv_heads * head_dim, self.kv_heads * head_dim]

    @property
    def ffn_hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.flavour == "llama":
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.vocab_multiple)
        return m * math.ceil(self.vocab_size / m)

    def validate(self) -> None:
        """Shape rules, checked before any tensor is made; the message names the option to change."""
        if self.n_embd % self.n_head:
            raise UserError(f"--model.n_embd {self.n_embd} must be divisible by --model.n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise UserError(
                f"--model.n_head {self.n_head} must be divisible by --model.n_kv_head {self.kv_heads}"
            )
        if self.flavour == "llama" and (self.n_embd // self.n_head) % 2:
            raise UserError("llama flavour needs an even head size (n_embd / n_head) for RoPE")
        if self.flavour == "llama" and self.activation != "gelu":
            raise UserError(
                f"--model.activation {self.activation} applies to the gpt2 flavour only: llama's MLP is "
                "SwiGLU (SiLU); leave --model.activation at gelu"
            )


@dataclass
class TrainConfig(Checked):
    """The training loop: length, batch, optimizer, schedule, evaluation, checkpoints, device."""

    max_steps: int = bounded(2000, ge=1)
    """Optimizer steps to run."""
    max_tokens: int = bounded(0, ge=0)
    """Stop after this many training tokens instead (sets max_steps; 0: use max_steps)."""
    max_minutes: float = bounded(0.0, ge=0)
    """A time budget for the whole run (0: none): the LR schedule follows the clock instead of max_steps,
    ending with the final evaluation and checkpoint inside it. Not bit-reproducible, unlike step budgets."""
    batch_size: int | Literal["auto"] = bounded(16, ge=1)
    """Sequences per micro-batch on each process; auto: the largest that fits (a probe on CUDA, the memory
    estimate on CPU), with grad_accum set to keep batch_tokens (default 524,288) tokens per step."""
    grad_accum: int = bounded(1, ge=1)
    """Micro-batches per optimizer step (ignored when batch_tokens is set)."""
    batch_tokens: int = bounded(0, ge=0)
    """Tokens per optimizer step over all processes; sets grad_accum (0: use grad_accum)."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw, or muon for the hidden matrices with AdamW for embeddings, head, norms and biases."""
    lr: float = bounded(3e-3, gt=0)
    """Peak learning rate."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """After warmup: cosine decay, warmup-stable-decay, or constant."""
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    """Final learning rate as a share of the peak (cosine and wsd)."""
    warmup_steps: int = bounded(100, ge=0)
    """Linear warmup steps."""
    decay_fraction: float = bounded(0.2, ge=0, le=1)
    """Share of max_steps spent decaying at the end of a wsd schedule."""
    weight_decay: float = bounded(0.1, ge=0)
    """Weight decay on matrices (not on biases, norms or embeddings)."""
    beta1: float = bounded(0.9, ge=0, lt=1)
    """AdamW beta1."""
    beta2: float = bounded(0.95, ge=0, lt=1)
    """AdamW beta2."""
    muon_momentum: float = bounded(0.95, ge=0, lt=1)
    """Muon's momentum (with --train.optimizer muon)."""
    grad_clip: float = bounded(1.0, ge=0)
    """Clip the gradient norm to this (0 disables)."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops training (pointing to the last good checkpoint) or skips that batch."""
    eval_interval: int = bounded(250, ge=1)
    """Steps between validation evaluations (and checkpoints)."""
    eval_batches: int = bounded(20, ge=1)
    """Validation batches per evaluation."""
    log_interval: int = bounded(10, ge=1)
    """Steps between progress updates."""
    keep_last: int = bounded(2, ge=1)
    """Step checkpoints to keep (best.safetensors is kept apart)."""
    seed: int = bounded(1337, ge=0)
    """Seed of initialization and batch order."""
    device: str = "auto"
    """cpu, cuda, mps or auto."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype: auto is bfloat16 on CUDA (fp32 master weights), float32 elsewhere."""
    compile: bool | None = None
    """torch.compile the model; default: on for CUDA, off on CPU."""
    deterministic: bool = False
    """Use only deterministic kernels (bit-identical reruns; slower on GPU)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state across processes (FSDP2) under torchrun."""
    threads: int = bounded(0, ge=0)
    """CPU threads for torch (0: torch's default)."""
    tensorboard: bool = False
    """Also log to RUN/tensorboard (needs the tensorboard package)."""
    init_from: str = ""
    """A run whose best weights a new run starts from (same tokenizer and model); '' starts from random
    weights. `scratchlm sft RUN --from BASE` sets it. A resume always continues the run's own checkpoint."""


@dataclass
class SampleConfig(Checked):
    """Text generation: length, sampling, stop strings."""

    max_new_tokens: int = bounded(200, ge=1)
    """Tokens to generate."""
    temperature: float = bounded(0.8, ge=0)
    """Softmax temperature; 0 means greedy."""
    top_k: int = bounded(50, ge=0)
    """Keep the k most likely tokens (0 keeps all)."""
    top_p: float = bounded(1.0, gt=0, le=1)
    """Nucleus sampling: keep the most likely tokens whose probabilities sum to this (1 keeps all)."""
    min_p: float = bounded(0.0, ge=0, le=1)
    """Drop tokens less likely than min_p x the top token's probability (0 keeps all)."""
    repetition_penalty: float = bounded(1.0, gt=0)
    """Above 1, makes tokens already in the prompt or output less likely (CTRL / transformers rule)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends before the first one, which is not printed. A JSON list
    (--stop '["\\n\\n", "THE END"]') or --stop+ STRING once per string."""
    seed: int = bounded(1337, ge=0)
    """Seed; the same seed gives the same text."""
    compile: bool = False
    """Compile the decode step with torch.compile (inductor) first: 3.5-4.5x tokens/s at batch 1 on CPU,
    llama.cpp's speed, after ~10-30 s of compiling (cached on disk for the next run); pays off for long or
    many replies. For serve: the batched step, a graph per batch size (1, 2, 4, ... up to --max-batch)."""


@dataclass
class EvalConfig(Checked):
    """Evaluation: what text to score and how."""

    text: str | None = None
    """Score this UTF-8 text file instead of the run's val split."""
    jsonl: str | None = None
    """Score this JSONL file instead of the val split: one document per line, in --text_field."""
    text_field: str = "text"
    """Field of each JSONL record that holds the text."""
    checkpoint: str = "best"
    """best, last, or a path to a .safetensors file."""
    stride: int | None = bounded(None, ge=1)
    """Sliding-window step in tokens; each token is scored once with up to block_size - stride tokens
    of context (default: block_size // 2)."""
    batch_size: int = bounded(16, ge=1)
    """Windows per forward pass."""
    device: str = "auto"
    """cpu, cuda, mps or auto."""
    prompts: list[str] = field(default_factory=lambda: ["", "The", "Once upon a time", "He said"])
    """Fixed prompts sampled into RUN/samples.txt and report.md ('' starts from <|bos|>)."""
    sample_tokens: int = bounded(64, ge=1)
    """New tokens per eval sample."""
    seed: int = bounded(1234, ge=0)
    """Seed of every eval sample, so reports of different runs and steps are comparable."""
    tasks: list[str] | str = field(default_factory=list)
    """lm-evaluation-harness tasks to run (pip install 'scratchlm[eval]'): hellaswag,arc_easy,... or a task
    of --include-path; results go to eval.json's benchmarks section and report.md."""
    include_path: str | None = None
    """A folder of your own lm-eval task YAMLs (lm-eval reads their data_files from the current folder)."""
    limit: float | None = bounded(None, gt=0)
    """Documents per task (a number below 1: that share of them); default all."""
    num_fewshot: int | None = bounded(None, ge=0)
    """Few-shot examples per prompt (default: each task's own)."""
    apply_chat_template: bool = False
    """Render prompts with the run's chat template (SFT runs)."""
    reply_tokens: int = bounded(128, ge=1)
    """SFT runs: the new-token limit of the greedy replies to every held-out conversation; a reply that has
    not emitted <|end|> by then, or is empty, does not count as one that ends."""


@dataclass
class SFTConfig(Checked):
    """Instruction tuning (`scratchlm sft`): the conversations to train on and how to read them."""

    base: str = ""
    """The pretrained run to start from: its tokenizer is copied and its best weights are the start."""
    inputs: list[str] = field(default_factory=list)
    """JSONL files of conversations (default: the bundled Self-Instruct seed tasks)."""
    val_inputs: list[str] = field(default_factory=list)
    """JSONL files to validate on (default: val_fraction of the inputs, held out)."""
    val_fraction: float = bounded(0.1, ge=0, lt=1)
    """Share of the conversations held out for validation when no val_inputs are given."""
    shape: Literal["auto", "messages", "alpaca", "self_instruct", "prompt_completion", "fields"] = "auto"
    """The JSONL layout: auto detects it per file from its first record."""
    prompt_field: str | None = None
    """With shape fields (or auto): the record field that holds the user's turn, e.g. question."""
    response_field: str | None = None
    """With shape fields (or auto): the record field that holds the reply, e.g. answer."""
    system_prompt: str | None = None
    """A system prompt put before every conversation that has none."""
    epochs: float = bounded(3.0, ge=0)
    """Passes over the training conversations; sets train.max_steps (0: use train.max_steps)."""
    end_weight: float = bounded(1.0, ge=0)
    """Loss weight of each reply's closing <|end|> against the reply's other tokens (1: a plain mean)."""
    # 8 chose a checkpoint whose 8 replies all ended where 2 of the 32 held out were empty (a 2 x 128 base,
    # docs/benchmarks.md, "Replies that end"): each prompt was 12.5% of the figure that picks the best.
    check_prompts: int = bounded(16, ge=0)
    """Validation prompts answered greedily at each evaluation, to measure how many replies end."""
    check_tokens: int = bounded(128, ge=1)
    """Token limit of those replies: one that has not emitted <|end|> by then, or is empty, did not end
    (128, as `scratchlm eval --reply-tokens` measures every held-out reply)."""


# What `scratchlm sft` trains with unless --config or flags say otherwise: a short warmup and evaluation often
# (few steps in all). The peak LR is for a base 128 wide, scaled by 128 / width for wider ones (sft_lr): on
# the seed tasks a 4x128 base tuned at 3e-4 ended 0 of 32 held-out replies, at 1e-3 21, at 3e-3 32
# (docs/benchmarks.md, "Replies that end").
SFT_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 3e-3,
    "warmup_steps": 10,
    "min_lr_ratio": 0.0,
    "eval_interval": 50,
    "eval_batches": 50,
}


def sft_lr(n_embd: int) -> float:
    """The default peak LR of a new SFT run from a base `n_embd` wide: 1/width beyond 128, as the plan
    scales its rates for wide shapes (124M GPT-2, 768 wide: 5e-4)."""
    return SFT_TRAIN_DEFAULTS["lr"] * 128 / max(128, n_embd)


@dataclass
class RunConfig(Checked):
    """Everything one run is made with; saved as RUN/config.yaml. `settings.resolve` builds the frozen one
    every command uses."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def freeze(self) -> RunConfig:
        """Refuse assignment from now on, in every section (what settings.resolve returns); returns self."""
        for name in SECTION_CLASSES:
            getattr(self, name)._freeze()
        self._freeze()
        return self

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A new, frozen config with some fields changed, checked as any: cfg.replace(train=dict(lr=1e-3))."""
        d = self.to_dict()
        for name, values in sections.items():
            d[name] = {**d[name], **values}
        return RunConfig.from_dict(d).freeze()

    def validate(self) -> None:
        """Every section's own checks: commands call this before they write anything into the run."""
        for name in SECTION_CLASSES:
            check = getattr(getattr(self, name), "validate", None)
            if check:
                check()

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> RunConfig:
        """Build and check every section; an unknown section or key (a typo) is an error naming `source`."""
        check_keys(d, source)
        kwargs = {}
        for name, section_cls in SECTION_CLASSES.items():
            try:
                kwargs[name] = section_cls(**(d.get(name) or {}))
            except SettingError as e:
                raise e.named(f"{name}.{e.name}") from None
        return cls(**kwargs)


def check_keys(d: Any, source: str = "") -> None:
    """The one unknown-key check of settings from any source (a run's config.yaml, a recipe, a checkpoint,
    keyword arguments): a misspelt key is an error naming where it is, never silently dropped."""
    where = f"{source}: " if source else ""
    if not isinstance(d, dict):
        raise UserError(f"{where}expected sections such as 'model:' and 'train:' at the top level")
    for section, values in d.items():
        if section not in SECTION_CLASSES:
            raise UserError(f"{where}unknown section '{section}'{did_you_mean(section, SECTION_CLASSES)}")
        if values is not None and not isinstance(values, dict):
            raise UserError(f"{where}section '{section}' must hold option: value lines")
        fields = [f.name for f in dataclasses.fields(SECTION_CLASSES[section])]
        for key in values or {}:
            if key not in fields:
                raise UserError(f"{where}unknown key '{section}.{key}'{did_you_mean(key, fields)}")


def did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


SECTION_CLASSES = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "sft": SFTConfig,
}

# `scratchlm demo`'s training minutes: the automatic plan fills them (about 5 minutes in all on 2 cores).
DEMO_MINUTES = 3.5

# Presets set the model shape and the batch/schedule that suits it; anything can be overridden.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # ~1M parameters with a 4k vocabulary: the CPU demo and the tests.
    "tiny": {
        "model": {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128},
        "train": {"batch_size": 16, "lr": 3e-3, "max_steps": 2000, "warmup_steps": 100, "eval_interval": 250},
    },
    # ~10M parameters: a laptop hour or a few GPU minutes.
    "small": {
        "model": {"block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384},
        "train": {"batch_size": 32, "lr": 1e-3, "max_steps": 5000, "warmup_steps": 200, "eval_interval": 500},
    },
    # GPT-2 small (124M with the 50k GPT-2 vocabulary): 12 layers, 12 heads, 768 wide, context 1024.
    "gpt2": {
        "model": {"block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768},
        "train": {
            "batch_size": 16,
            "grad_accum": 32,
            "lr": 6e-4,
            "max_steps": 20000,
            "warmup_steps": 700,
            "eval_interval": 1000,
        },
    },
}
