"""Evaluating runs: score them (scoring.py does the math), write eval.json and report.md, compare runs
(what `scratchlm eval` and the demo call)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from .checkpoint import load
from .common import UserError, atomic_write_text, pick_device, rank0_print
from .config import DataConfig, EvalConfig
from .data.corpus import read_cleaned
from .data.shards import open_split
from .data.sources import get_field, jsonl_objects
from .metrics import read_metrics
from .run import Run
from .scoring import batches_loss, score_tokens


def _documents(cfg: EvalConfig, data: DataConfig) -> tuple[str, list[str]]:
    """The documents of --text (cleaned as the run's `prepare` cleaned its text, so its score compares
    with the val split's) or of --jsonl."""
    if cfg.text and cfg.jsonl:
        raise UserError("give --text or --jsonl, not both")
    if cfg.text:
        path = Path(cfg.text)
        return str(path), [read_cleaned(path, data)]
    path = Path(cfg.jsonl)
    if not path.is_file():
        raise UserError(f"--jsonl {path}: no such file")
    docs = [get_field(obj, cfg.text_field, where, "set --text_field") for where, obj in jsonl_objects(path)]
    if not docs:
        raise UserError(f"--jsonl {path}: no records")
    return str(path), docs


def _eval_tokens(lm, run: Run, cfg: EvalConfig) -> tuple[str, np.ndarray]:
    """The token stream to score, laid out as in training: <|bos|> document <|eos|>, one after another."""
    if not (cfg.text or cfg.jsonl):
        if not run.has_data():
            raise UserError(
                f"{run.root}: a model without prepared data (imported, or data/ removed), so no validation "
                f"split; score a text file: `scratchlm eval {run.root} --text FILE`"
            )
        shards = open_split(run.data_dir, "val", lm.tokenizer.hash)
        if shards.total < 2:
            raise UserError(f"{run.data_dir}: the val split is empty; evaluate a file with --text")
        return "val", np.concatenate([np.asarray(a) for a in shards.arrays])
    source, docs = _documents(cfg, lm.config.data)
    tok = lm.tokenizer
    # The leading <|bos|> makes each document's first token a scored target: a file's bytes all count.
    ids = []
    for doc in docs:
        ids += [tok.bos_id] + tok.encode(doc) + [tok.eos_id]
    return source, np.asarray(ids, dtype=np.int64)


def _eval_samples(lm, cfg: EvalConfig) -> list[tuple[str, str]]:
    from .decode import stream_text

    scfg = dataclasses.replace(lm.config.sample, max_new_tokens=cfg.sample_tokens, seed=cfg.seed)
    return [(p, "".join(stream_text(lm, p, scfg))) for p in cfg.prompts]


def _sft_eval(lm, run: Run, cfg: EvalConfig) -> tuple[str, dict, list[tuple[str, str]]]:
    """An SFT run on its validation conversations: loss per reply token, how many greedy replies to all of
    them end with <|end|> within cfg.reply_tokens (empty ones count as not ending), and greedy replies to
    the first prompts as samples."""
    from .data.sft import describe_held_out, encode_conversations, sequential_batches, split_conversations
    from .lm import count_replies_that_end, greedy_reply

    tok, block = lm.tokenizer, lm.model.config.block_size
    train, val = split_conversations(lm.config, run.root)
    examples = encode_conversations(val, tok, block)
    device = next(lm.model.parameters()).device
    batches = sequential_batches(examples, cfg.batch_size, block, None, tok.pad_id)
    metrics = batches_loss(lm.model, batches, device, tok.token_bytes())
    prompts = [c.messages[:-1] for c in val]
    ends = count_replies_that_end(lm.model, tok, prompts, cfg.reply_tokens)
    metrics["end_rate"] = ends.rate
    metrics["replies"] = {
        "ended": ends.ended,
        "empty": ends.empty,
        "prompts": ends.total,
        "max_new_tokens": cfg.reply_tokens,
        "held_out": describe_held_out(lm.config, train, val),
        "summary": str(ends),
    }
    metrics["conversations"] = len(examples)
    samples = []
    for messages in prompts[:4]:
        reply = greedy_reply(lm.model, tok, messages, cfg.sample_tokens).text
        samples.append((f"User: {messages[-1]['content']}\nAssistant: ", reply))
    return "sft val", metrics, samples


def _replies_line(result: dict) -> str:
    """The count of replies that end, with what it was measured on: one line for the output and report."""
    r = result["replies"]
    return (
        f"replies that end: {r['summary']} (greedy, within {r['max_new_tokens']} new tokens, replying to "
        f"{r['held_out']})"
    )


def _how(result: dict) -> str:
    if result["stride"] is None:
        return f"replies of {result['conversations']} held-out conversations"
    return f"stride {result['stride']}"


def _train_facts(run: Run) -> dict:
    rows = read_metrics(run.metrics_path)
    last = rows[-1] if rows else {}
    return {
        "tokens_seen": int(float(last["tokens"])) if last.get("tokens") else None,
        "train_seconds": float(last["elapsed_s"]) if last.get("elapsed_s") else None,
    }


def evaluate_run(run_dir: str | Path, cfg: EvalConfig | None = None, out=None) -> dict:
    """Score one run, sample its fixed prompts, and write eval.json, report.md and samples.txt."""
    from .sampling import append_samples

    cfg = cfg or EvalConfig()
    out = out or sys.stdout
    run = Run.at(run_dir)
    lm = load(run.root, cfg.checkpoint, device=str(pick_device(cfg.device, "--device")))
    block = lm.model.config.block_size
    stride = cfg.stride or max(1, block // 2)
    tok = lm.tokenizer
    if lm.config.sft.base and not (cfg.text or cfg.jsonl):  # a chat model: its held-out conversations
        source, metrics, samples = _sft_eval(lm, run, cfg)
        stride = None
    else:
        source, tokens = _eval_tokens(lm, run, cfg)
        metrics = score_tokens(lm.model, tokens, stride, cfg.batch_size, tok.token_bytes(), tok.bos_id)
        samples = _eval_samples(lm, cfg)
    result = {
        "run": str(run.root),
        "source": source,
        "checkpoint": cfg.checkpoint,
        "step": lm.step,
        **metrics,
        "stride": stride,
        "block_size": block,
        "parameters": lm.model.num_params(),
        "tokenizer": {
            "kind": lm.tokenizer.kind,
            "vocab_size": lm.tokenizer.vocab_size,
            "hash": lm.tokenizer.hash,
        },
        **_train_facts(run),
        "samples": [{"prompt": p, "text": t, "seed": cfg.seed} for p, t in samples],
    }
    bench = _benchmarks(lm, run, cfg, out)
    if bench:
        result["benchmarks"] = bench
    # Shown before anything is written, so a read-only run still gives its numbers.
    print(
        f"{run.root} on {source}: loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
        f"bits/byte {result['bits_per_byte']:.4f}  ({result['tokens']:,} tokens, {result['bytes']:,} bytes "
        f"scored, {_how(result)}, step {lm.step})",
        file=out,
        flush=True,
    )
    if "replies" in result:
        print(_replies_line(result), file=out, flush=True)
    atomic_write_text(run.eval_path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    ran = set(result["benchmarks"]["calls"][-1]["tasks"]) if cfg.tasks else set()
    atomic_write_text(run.root / "report.md", render_report(result, lm.config.to_dict(), run, ran))
    append_samples(
        run,
        [
            f"--- eval, step {lm.step}, seed {cfg.seed}, max_new_tokens {cfg.sample_tokens}\n{p}{t}\n"
            for p, t in samples
        ],
    )
    return result


def _benchmarks(lm, run: Run, cfg: EvalConfig, out) -> dict | None:
    """eval.json's benchmarks section: the lm-eval tasks of --tasks, run now, and those of earlier evals
    (in the run's eval.json) that this one did not run again. A plain eval keeps them all."""
    try:
        earlier = json.loads(run.eval_path.read_text(encoding="utf-8")).get("benchmarks")
    except (OSError, ValueError, AttributeError):  # no eval.json yet, or one that cannot be read
        earlier = None
    if cfg.tasks:
        from .benchmarks import merge_benchmarks, run_benchmarks

        return merge_benchmarks(earlier, run_benchmarks(lm, cfg))
    if earlier:
        kept = ", ".join(earlier.get("tasks", {}))
        print(f"keeping the lm-eval results of earlier evals (eval.json, report.md): {kept}", file=out)
    return earlier


def render_report(result: dict, config: dict, run: Run, ran: set[str] | frozenset[str] = frozenset()) -> str:
    """report.md; `ran`: the benchmark tasks this eval ran (the others are from earlier evals)."""

    def fmt(v, spec=","):
        return "n/a" if v is None else format(v, spec)

    minutes = None if result["train_seconds"] is None else result["train_seconds"] / 60
    lines = [
        f"# {run.root.name}: evaluation at step {result['step']}",
        "",
        f"| | |\n|---|---|\n| parameters | {fmt(result['parameters'])} |",
        f"| tokens seen in training | {fmt(result['tokens_seen'])} |",
        f"| training time | {fmt(minutes, '.1f')} min |",
        f"| scored | {result['source']}: {result['tokens']:,} tokens, {result['bytes']:,} bytes, "
        f"{_how(result)}, {result['block_size']}-token context |",
        f"| loss (nats/token) | {result['loss']:.4f} |",
        f"| perplexity | {result['perplexity']:.2f} |",
        f"| bits per byte | {result['bits_per_byte']:.4f} |",
        *(
            [f"| replies that end with <\\|end\\|> | {_replies_line(result).split(': ', 1)[1]} |"]
            if "replies" in result
            else []
        ),
        "",
        "![loss curve](loss.png)" if (run.loss_plot_path).is_file() else "(no loss.png yet)",
        "",
        "## Samples",
        "",
    ]
    for s in result["samples"]:
        lines += [
            f"Prompt {s['prompt']!r}, seed {s['seed']}:",
            "",
            "```text",
            s["prompt"] + s["text"],
            "```",
            "",
        ]
    if result.get("benchmarks"):
        from .benchmarks import report_lines

        lines += report_lines(result["benchmarks"], ran)
    lines += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def comparison_table(results: list[dict]) -> str:
    """A plain-text table of several runs; bits per byte is the column to compare across tokenizers. Then one
    column per lm-eval task and metric any run has in its eval.json (blank where a run lacks it)."""
    from .benchmarks import comparison_columns

    bench_head, bench_rows = comparison_columns(results)
    head = ["run", "step", "params", "tokens seen", "loss", "ppl", "bits/byte", "scored tokens", *bench_head]
    rows = [
        [
            r["run"],
            str(r["step"]),
            f"{r['parameters']:,}",
            "n/a" if r["tokens_seen"] is None else f"{r['tokens_seen']:,}",
            f"{r['loss']:.4f}",
            f"{r['perplexity']:.2f}",
            f"{r['bits_per_byte']:.4f}",
            f"{r['tokens']:,}",
            *extra,
        ]
        for r, extra in zip(results, bench_rows, strict=True)
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len({r["tokenizer"]["hash"] for r in results}) > 1:
        lines.append("(the runs use different tokenizers: compare bits/byte, not loss or perplexity)")
    return "\n".join(lines)


def evaluate_runs(run_dirs: str | Path | list, cfg: EvalConfig | None = None, out=None) -> dict | list[dict]:
    """Evaluate each run; several runs end with a comparison table (`scratchlm eval RUN [RUN ...]`)."""
    out = out or sys.stdout
    single = isinstance(run_dirs, (str, Path))
    results = [evaluate_run(r, cfg, out) for r in ([run_dirs] if single else run_dirs)]
    if len(results) > 1:
        rank0_print("\n" + comparison_table(results), file=out)
    return results[0] if single else results
