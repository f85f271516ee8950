"""The README.md model card of an exported model: what it is, what it read, how well it does."""

from __future__ import annotations

import json
from pathlib import Path

from ..chat_template import LAYOUT
from ..common import UserError
from ..run import Run
from .adapters import start_id

# The bundled book is the only source whose licence scratchlm knows; anything else is the user's to state.
_KNOWN_LICENCES = {
    "war_and_peace.txt.gz": "public domain (Tolstoy, tr. Louise and Aylmer Maude; Project Gutenberg #2600)",
}


_ACTIVATION_NAMES = {"gelu": "exact (erf) GELU", "gelu_tanh": "tanh-approximate GELU (gelu_new)"}


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or delete it") from None


def _source_name(source: dict) -> str:
    """A manifest source as the user named it: a file's name, or hf:NAME for a hub dataset."""
    where = str(source.get("input", source.get("path", "?")))
    return f"hf:{where}" if source.get("kind") == "hf_hub" else Path(where).name


def _licence(source: dict) -> str:
    for key in ("licence", "license"):
        if source.get(key):
            return str(source[key])
    return _KNOWN_LICENCES.get(
        _source_name(source), "not recorded: state the licence of this text before publishing"
    )


def _tokens_per_step(run_root: Path, t, block_size: int) -> int:
    """From RUN/metrics.csv, which counts every process and batch_tokens; else from the settings."""
    from ..metrics import read_metrics

    for row in read_metrics(run_root / "metrics.csv"):
        step, tokens = float(row.get("step") or 0), float(row.get("tokens") or 0)
        if step > 0 and tokens > 0:
            return round(tokens / step)
    return t.batch_tokens or t.batch_size * t.grad_accum * block_size


def model_card(lm, run_root: Path, arch: str) -> str:
    """The Hugging Face folder's README.md from the loaded model, RUN/data/manifest.json and RUN/eval.json."""
    # The count `train` prints (GPT.num_params), so the card and the training log name one number.
    params = lm.model.num_params()
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [scratchlm]",
        "---",
        f"# {run_root.name}",
        "",
        f"A {params / 1e6:.2f}M-parameter {arch} language model trained from scratch with scratchlm.",
        "",
    ]
    lines += _architecture(lm.config, params)
    lines += _data(_read_json(_pretraining_run(run_root).manifest_path) or {}, lm.config.sft)
    lines += _training(lm, run_root)
    lines += _evaluation(_read_json(run_root / "eval.json"))
    lines += _use(lm.tokenizer)
    return "\n".join(lines)


def _architecture(cfg, params: int) -> list[str]:
    m = cfg.model
    return [
        "## Architecture",
        f"- {m.flavour} flavour: {m.n_layer} layers, {m.n_head} heads ({m.kv_heads} key/value heads), "
        f"width {m.n_embd}, MLP hidden {m.ffn_hidden}"
        + (", SwiGLU" if m.flavour == "llama" else f", {_ACTIVATION_NAMES[m.activation]}")
        + (", QK-norm (RMSNorm per head on queries and keys, before RoPE)" if m.qk_norm else "")
        + f", context {m.block_size} tokens",
        f"- vocabulary {m.vocab_size} ({cfg.tokenizer.kind} tokenizer), "
        f"{'tied' if m.tie_embeddings else 'separate'} input/output embeddings",
        f"- {params:,} parameters, as `scratchlm train` counts them"
        + (
            f"; {params - _padding(m):,} in this export, which leaves out the {_padding(m):,} of the "
            "vocabulary's padding rows"
            if _padding(m)
            else ""
        ),
        "",
    ]


def _padding(m) -> int:
    """Weights of the embedding (and untied head) rows past vocab_size: padding the export leaves out."""
    return (m.padded_vocab_size - m.vocab_size) * (1 if m.tie_embeddings else 2) * m.n_embd


def _pretraining_run(run_root: Path) -> Run:
    """The run whose data/ the model was pretrained on: the run itself, or the base of an SFT run (which has
    no data/ of its own; its card said "not recorded")."""
    run = Run.at(run_root)
    return Run.at(run.base) if run.base and not run.has_data() else run


def _data(manifest: dict, sft) -> list[str]:
    """The sources with their licences, and the tokens of each split, from the pretraining run's
    data/manifest.json; for an SFT run, its conversations too."""
    lines = ["## Data"]
    if sft.base:
        tuned_on = (
            ", ".join(f"`{Path(p).name}`" for p in sft.inputs) or "the bundled Self-Instruct seed tasks"
        )
        lines.append(
            f"- instruction-tuned on {tuned_on}, from the base run `{Path(sft.base).name}`, pretrained on:"
        )
    sources = manifest.get("sources") or []
    if sources:
        for s in sources:
            lines.append(f"- `{_source_name(s)}`: {s.get('chars', '?'):,} characters; licence: {_licence(s)}")
    else:
        lines.append("- not recorded (RUN/data/manifest.json is missing)")
    splits = manifest.get("splits") or {}
    for split, shards in splits.items():
        lines.append(f"- {split} split: {sum(s.get('tokens', 0) for s in shards):,} tokens")
    return lines


def _training(lm, run_root: Path) -> list[str]:
    m, t = lm.config.model, lm.config.train
    per_step = _tokens_per_step(run_root, t, m.block_size)
    return [
        "",
        "## Training",
        f"- {lm.step:,} steps, {lm.step * per_step:,} tokens seen ({per_step:,} tokens per step, "
        f"sequences of {m.block_size} tokens)",
        f"- {t.optimizer} optimizer, peak learning rate {t.lr}, {t.warmup_steps} warmup steps, {t.schedule} "
        f"schedule down to {t.min_lr_ratio} x peak, weight decay {t.weight_decay}, "
        f"gradient clip {t.grad_clip}, seed {t.seed}",
        "",
    ]


def _evaluation(evaluation: dict | None) -> list[str]:
    lines = ["## Evaluation"]
    if evaluation:
        keys = [k for k in ("loss", "perplexity", "bits_per_byte", "tokens", "step") if k in evaluation]
        lines.append(f"On `{evaluation.get('source', 'val')}`:")
        lines += [f"- {k}: {evaluation[k]}" for k in keys]
    else:
        lines.append("Not evaluated yet (run `scratchlm eval RUN` before exporting to include metrics).")
    return lines


def _use(tokenizer) -> list[str]:
    """How to load and prompt the export with transformers: the start token first, as in training."""
    start = tokenizer.piece(start_id(tokenizer))
    return [
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")  # no trust_remote_code needed',
        f"ids = [tok.bos_token_id] + tok.encode('Once upon a time')  # {start} first, as in training",
        "out = model.generate(torch.tensor([ids]), max_new_tokens=50, do_sample=False)  # greedy",
        "print(tok.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
        f"Prompts start with `{start}`, the token every training document follows. It is the BOS id of "
        "this export, so `generate()` from nothing starts there; the tokenizer adds no special tokens. "
        "Without `do_sample=False`, `generate()` samples with the settings of generation_config.json.",
        "",
        f"Chat format: `{LAYOUT}` (the tokenizer's chat template; `generate()` stops at `<|end|>`).",
        "",
    ]
