"""The `scratchlm` command: one subcommand per stage. It parses, then calls one function.

Settings come from the dataclasses in config.py through jsonargparse, merged in this order:
built-in defaults < the run's saved config.yaml < --preset < --config FILE.yaml < --section.option flags.
"""

from __future__ import annotations

import argparse
import sys

from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

from .common import UserError
from .config import (
    PRESETS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TokenizerConfig,
    TrainConfig,
)

set_parsing_settings(docstring_parse_attribute_docstrings=True)


class _Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the examples in --help."""


EXAMPLES = {
    "prepare": """examples:
  scratchlm prepare runs/demo                                  # the bundled book (War and Peace)
  scratchlm prepare runs/mine --input novel.txt --input more/  # your own text files or folders
  scratchlm prepare runs/mine --input book.txt --tokenizer.vocab_size 8000 --tokenizer.kind bpe
  scratchlm prepare runs/ja --input neko.txt --data.encoding cp932            # Shift_JIS Aozora Bunko file
  scratchlm prepare runs/wiki --input wiki.jsonl --data.text_field text --data.include '["ファミコン"]'
  scratchlm prepare runs/news --input data.parquet --input saved_dataset/ --data.hf_split train
  scratchlm prepare runs/hub --input hf:owner/name --data.hf_config ja   # needs `datasets` + network""",
    "train": """examples:
  scratchlm train runs/demo --preset tiny
  scratchlm train runs/demo --model.n-layer 6 --train.max-steps 2000
  scratchlm train runs/demo --config configs/my-recipe.yaml --train.lr 1e-3
  scratchlm train runs/demo                 # continues from the newest checkpoint""",
    "eval": """examples:
  scratchlm eval runs/demo                      # the run's validation split
  scratchlm eval runs/demo --text chapter.txt   # any UTF-8 text file
  scratchlm eval runs/demo --jsonl docs.jsonl --text-field body --stride 32
  scratchlm eval runs/a runs/b runs/c           # a comparison table (bits/byte compares tokenizers)""",
    "sample": """examples:
  scratchlm sample runs/demo "Prince Andrew"
  scratchlm sample runs/demo "The war" --max-new-tokens 100 --temperature 0.7 --top-k 40 --seed 3
  scratchlm sample runs/demo "Natasha" --top-p 0.9 --min-p 0.05 --repetition-penalty 1.2 --stop+ '.'
  scratchlm sample runs/demo "" --temperature 0              # greedy, from <|bos|>
  scratchlm sample runs/demo --prompts-file prompts.txt      # one output per line (or .jsonl "prompt")""",
    "export": """examples:
  scratchlm export runs/demo --format hf --out exports/demo-hf         # AutoModelForCausalLM loads it
  scratchlm export runs/demo --format gguf --out demo.gguf --dtype q8_0  # for llama.cpp tools
  scratchlm export runs/demo --format hf --out exports/demo-hf --checkpoint last --force""",
    "import": """examples:
  scratchlm import exports/demo-hf runs/imported   # then eval, sample or train it like any run""",
    "tokenizer": """examples:
  scratchlm tokenizer train runs/mine --input book.txt --tokenizer.kind unigram --tokenizer.vocab-size 32000
  scratchlm tokenizer encode runs/mine "吾輩は猫である。"
  scratchlm tokenizer decode runs/mine 412 88 1093
  scratchlm tokenizer stats runs/mine --text chapter.txt""",
    "demo": """examples:
  scratchlm demo                  # prepare, train, eval and sample into runs/demo
  scratchlm demo --steps 100      # a shorter training""",
}

SECTIONS = {"data": DataConfig, "tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}


def _subparser(name: str, description: str) -> ArgumentParser:
    return ArgumentParser(
        prog=f"scratchlm {name}",
        description=description,
        epilog=EXAMPLES[name],
        formatter_class=_Formatter,
        exit_on_error=True,
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="scratchlm",
        formatter_class=_Formatter,
        description="Train your own small GPT from scratch on your own text.",
    )
    subcommands = parser.add_subcommands(dest="command")

    p = _subparser("prepare", "Read a corpus, train a tokenizer and write train/val token shards into RUN.")
    p.add_argument("run", help="run directory (created if missing)")
    p.add_argument(
        "--input",
        action="append",
        default=None,
        metavar="PATH",
        help="text/.gz/.jsonl/.parquet file, directory, glob, save_to_disk folder or hf:NAME; repeatable "
        "(default: the bundled book)",
    )
    p.add_argument(
        "--config", metavar="FILE.yaml", help="recipe: YAML with data/tokenizer (and other) sections"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="prepare a run that has been trained: its checkpoints and metrics go to RUN/previous/<time>/",
    )
    p.add_class_arguments(DataConfig, "data")
    p.add_class_arguments(TokenizerConfig, "tokenizer")
    subcommands.add_subcommand("prepare", p, help="corpus → tokenizer → token shards")

    p = _subparser("train", "Train (or continue training) the run's model.")
    p.add_argument("run", help="a run directory made by `scratchlm prepare`")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model size and schedule: tiny (~1M params), small (~10M), gpt2 (124M)",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="recipe: YAML with model/train (and other) sections")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint (the default when one exists); error if none",
    )
    resume.add_argument(
        "--fresh",
        action="store_true",
        help="start from step 0; the old checkpoints and metrics go to RUN/previous/<time>/",
    )
    p.add_class_arguments(ModelConfig, "model")
    p.add_class_arguments(TrainConfig, "train")
    subcommands.add_subcommand("train", p, help="pretrain the model")

    p = _subparser(
        "eval",
        "Loss, perplexity and bits per byte with a sliding window; fixed-seed samples; eval.json and "
        "report.md in each RUN; a comparison table for several runs.",
    )
    p.add_argument("runs", nargs="+", help="one or more trained run directories")
    p.add_class_arguments(EvalConfig, None)
    subcommands.add_subcommand("eval", p, help="loss, perplexity, bits per byte")

    p = _subparser("sample", "Continue PROMPT with the run's model, streaming to the terminal.")
    p.add_argument("run", help="a trained run directory")
    p.add_argument("prompt", nargs="?", default=None, help="text to continue ('' starts from <|bos|>)")
    p.add_argument("--prompts_file", default=None, help='one prompt per line (or .jsonl with "prompt")')
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    p.add_class_arguments(SampleConfig, None)
    subcommands.add_subcommand("sample", p, help="generate text")

    p = _subparser("export", "Write the run's model as a Hugging Face folder or a GGUF file.")
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--format", required=True, help="hf (GPT2LMHeadModel / LlamaForCausalLM folder) or gguf")
    p.add_argument("--out", required=True, help="output folder (hf) or .gguf file")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    p.add_argument("--dtype", default="f32", help="hf: f32, f16 or bf16; gguf: f32, f16 or q8_0")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    subcommands.add_subcommand("export", p, help="to Hugging Face transformers or GGUF (llama.cpp)")

    p = _subparser("import", "Turn a Hugging Face GPT-2 or Llama folder into a scratchlm run.")
    p.add_argument("hf_dir", help="a folder with config.json, model.safetensors and tokenizer files")
    p.add_argument("run", help="the new run directory")
    subcommands.add_subcommand("import", p, help="a Hugging Face GPT-2 / Llama folder → a run")

    p = _subparser("demo", "The whole pipeline on the bundled book, in a few CPU minutes.")
    p.add_argument("run", nargs="?", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--steps", type=int, default=360, help="training steps (about 3 minutes on 2 CPU cores)")
    p.add_argument("--minutes", type=float, default=4.0, help="stop training after this many minutes anyway")
    subcommands.add_subcommand("demo", p, help="prepare, train, eval and sample on the bundled book")

    p = _subparser("tokenizer", "Train, try and inspect the run's tokenizer (RUN/tokenizer/).")
    subcommands.add_subcommand("tokenizer", p, help="train / encode / decode / stats of the tokenizer")
    tok_commands = p.add_subcommands(dest="action")
    q = ArgumentParser(prog="scratchlm tokenizer train", description="Train RUN's tokenizer on the inputs.")
    q.add_argument("run", help="run directory (created if missing)")
    q.add_argument("--input", action="append", default=None, metavar="PATH", help="as for `prepare`")
    q.add_argument("--overwrite", action="store_true", help="replace the run's existing tokenizer")
    q.add_argument("--config", metavar="FILE.yaml", help="recipe: YAML with data/tokenizer sections")
    q.add_class_arguments(DataConfig, "data")
    q.add_class_arguments(TokenizerConfig, "tokenizer")
    tok_commands.add_subcommand("train", q, help="train the tokenizer only")
    q = ArgumentParser(prog="scratchlm tokenizer encode", description="Print the ids of TEXT.")
    q.add_argument("run", help="a run directory with a tokenizer")
    q.add_argument("text", help="text to encode")
    q.add_argument("--allow_special", action="store_true", help='turn "<|eos|>" etc. into special ids')
    tok_commands.add_subcommand("encode", q, help="text → ids")
    q = ArgumentParser(prog="scratchlm tokenizer decode", description="Print the text of IDS.")
    q.add_argument("run", help="a run directory with a tokenizer")
    q.add_argument("ids", nargs="+", help="token ids (spaces or commas between them)")
    tok_commands.add_subcommand("decode", q, help="ids → text")
    q = ArgumentParser(
        prog="scratchlm tokenizer stats", description="Tokens, bytes and characters per token…"
    )
    q.add_argument("run", help="a run directory with a tokenizer")
    q.add_argument("--text", default=None, help="measure this UTF-8 file (default: the run's inputs)")
    tok_commands.add_subcommand("stats", q, help="compression, byte-fallback rate, longest tokens")
    return parser


def normalize_option_names(argv: list[str]) -> list[str]:
    """Accept --model.n-layer as well as --model.n_layer (the dataclass field names)."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


COMMAND_SECTIONS = {
    "prepare": ("data", "tokenizer"),
    "train": ("model", "train"),
    "tokenizer train": ("data", "tokenizer"),
}


def recipe_flags(path: str, command: str) -> list[str]:
    """A recipe YAML as --section.key flags, so jsonargparse type-checks it like the command line.

    A recipe may hold every section (one file for prepare and train); each command takes its own.
    """
    import json

    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise UserError(f"--config {path}: expected sections such as 'model:' and 'train:' at the top level")
    flags = []
    for section, values in recipe.items():
        if section not in RunConfig.__dataclass_fields__:
            known = ", ".join(RunConfig.__dataclass_fields__)
            raise UserError(f"--config {path}: unknown section '{section}' (known: {known})")
        if section in COMMAND_SECTIONS[command]:
            for key, value in (values or {}).items():
                flags += [f"--{section}.{key}", value if isinstance(value, str) else json.dumps(value)]
    return flags


def _expand_recipe(args: list[str]) -> list[str]:
    """Replace `--config FILE` with the recipe's flags, placed before the user's own flags (which win)."""
    head = 2 if args[:2] == ["tokenizer", "train"] else 1
    command = " ".join(args[:head])
    if command not in COMMAND_SECTIONS:
        return args
    rest, path = [], None
    i = head
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            path, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--config="):
            path = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return [*args[:head], *(recipe_flags(path, command) if path else []), *rest]


def _base_config(run_dir: str, preset: str | None) -> RunConfig:
    from .run import Run

    run = Run.at(run_dir)
    cfg = run.load_config() if run.has_config() else RunConfig()
    if preset:
        for section, values in PRESETS[preset].items():
            for key, value in values.items():
                setattr(getattr(cfg, section), key, value)
    return cfg


def _parse(argv: list[str]):
    parser = build_parser()
    args = _expand_recipe(normalize_option_names(argv))
    ns = parser.parse_args(args)
    cmd = ns.command
    if cmd in ("prepare", "train"):
        # Second pass: the run's saved settings and the preset become the defaults that flags override.
        sub = ns[cmd]
        base = _base_config(sub.run, getattr(sub, "preset", None))
        subparser = parser._subcommands_action._name_parser_map[cmd]
        subparser.set_defaults(
            {
                f"{s}.{k}": v
                for s in SECTIONS
                for k, v in base.to_dict()[s].items()
                if f"{s}.{k}" in {a.dest for a in subparser._actions}
            }
        )
        ns = parser.parse_args(args)
        sub = ns[cmd]
        d = sub.as_dict()
        cfg = RunConfig.from_dict({**base.to_dict(), **{s: d[s] for s in SECTIONS if s in d}})
        return cmd, sub, cfg
    if cmd == "tokenizer" and ns[cmd].action == "train":
        # As for prepare: the run's saved settings are the defaults that flags override.
        base = _base_config(ns[cmd].train.run, None)
        group = parser._subcommands_action._name_parser_map[cmd]
        subparser = group._subcommands_action._name_parser_map["train"]
        known = {a.dest for a in subparser._actions}
        flat = {f"{s}.{k}": v for s in ("data", "tokenizer") for k, v in base.to_dict()[s].items()}
        subparser.set_defaults({k: v for k, v in flat.items() if k in known})
        sub = parser.parse_args(args)[cmd]
        d = sub.train.as_dict()
        cfg = RunConfig.from_dict({**base.to_dict(), "data": d["data"], "tokenizer": d["tokenizer"]})
        return cmd, sub, cfg
    return cmd, ns[cmd], None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd, args, cfg = _parse(argv)
        if cmd == "prepare":
            from .prepare import prepare

            if args.input:
                cfg.data.inputs = list(args.input)
            prepare(args.run, cfg, overwrite=args.overwrite)
        elif cmd == "train":
            from .train import train

            train(args.run, cfg, resume=False if args.fresh else (True if args.resume else None))
        elif cmd == "eval":
            from .evaluate import evaluate

            fields = EvalConfig.__dataclass_fields__
            evaluate(list(args.runs), EvalConfig(**{k: args[k] for k in fields}))
        elif cmd == "sample":
            from .sample import read_prompts, sample

            if (args.prompt is None) == (args.prompts_file is None):
                raise UserError("give a PROMPT or --prompts_file FILE (one of them)")
            fields = SampleConfig.__dataclass_fields__
            sample(
                args.run,
                args.prompt if args.prompts_file is None else read_prompts(args.prompts_file),
                SampleConfig(**{k: args[k] for k in fields}),
                checkpoint=args.checkpoint,
            )
        elif cmd == "export":
            from .export import export

            out = export(args.run, args.format, args.out, args.checkpoint, args.dtype, args.force)
            print(f"wrote {out}")
        elif cmd == "import":
            from .export import import_run

            run = import_run(args.hf_dir, args.run)
            print(f"imported {args.hf_dir} into {run}")
        elif cmd == "demo":
            from .demo import demo

            demo(args.run, steps=args.steps, minutes=args.minutes)
        elif cmd == "tokenizer":
            from . import tokenizer_cmd

            action, sub = args.action, args[args.action]
            if action == "train":
                if sub.input:
                    cfg.data.inputs = list(sub.input)
                tokenizer_cmd.train_command(sub.run, cfg, overwrite=sub.overwrite)
            elif action == "encode":
                tokenizer_cmd.encode_command(sub.run, sub.text, allow_special=sub.allow_special)
            elif action == "decode":
                tokenizer_cmd.decode_command(sub.run, sub.ids)
            else:
                tokenizer_cmd.stats(sub.run, text=sub.text)
    except UserError as e:
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 2
    return 0
