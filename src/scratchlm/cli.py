"""The `scratchlm` command: one subcommand per stage. It parses, then calls one function.

Settings come from the dataclasses in config.py through jsonargparse, merged in this order:
built-in defaults < the run's saved config.yaml < --preset < --config FILE.yaml < --section.option flags.
"""

from __future__ import annotations

import argparse
import sys

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, set_parsing_settings

from .common import UserError
from .config import PRESETS, DataConfig, ModelConfig, RunConfig, SampleConfig, TokenizerConfig, TrainConfig

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
  scratchlm eval runs/demo --text chapter.txt   # any UTF-8 text file""",
    "sample": """examples:
  scratchlm sample runs/demo "Prince Andrew"
  scratchlm sample runs/demo "The war" --max-new-tokens 100 --temperature 0.7 --top-k 40 --seed 3""",
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
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with data/tokenizer settings")
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
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with model/train settings")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start from step 0")
    p.add_class_arguments(ModelConfig, "model")
    p.add_class_arguments(TrainConfig, "train")
    subcommands.add_subcommand("train", p, help="pretrain the model")

    p = _subparser("eval", "Validation loss, perplexity and bits per byte.")
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--text", default=None, help="score this UTF-8 text file instead of the val split")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    subcommands.add_subcommand("eval", p, help="loss, perplexity, bits per byte")

    p = _subparser("sample", "Continue PROMPT with the run's model, streaming to the terminal.")
    p.add_argument("run", help="a trained run directory")
    p.add_argument("prompt", help="text to continue ('' starts from nothing)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    p.add_class_arguments(SampleConfig, None)
    subcommands.add_subcommand("sample", p, help="generate text")

    p = _subparser("demo", "The whole pipeline on the bundled book, in a few CPU minutes.")
    p.add_argument("run", nargs="?", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--steps", type=int, default=360, help="training steps (about 3 minutes on 2 CPU cores)")
    p.add_argument("--minutes", type=float, default=4.0, help="stop training after this many minutes anyway")
    subcommands.add_subcommand("demo", p, help="prepare, train, eval and sample on the bundled book")
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
    args = normalize_option_names(argv)
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
    return cmd, ns[cmd], None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd, args, cfg = _parse(argv)
        if cmd == "prepare":
            from .prepare import prepare

            if args.input:
                cfg.data.inputs = list(args.input)
            prepare(args.run, cfg)
        elif cmd == "train":
            from .train import train

            train(args.run, cfg, resume=not args.fresh)
        elif cmd == "eval":
            from .evaluate import evaluate

            evaluate(args.run, text=args.text, checkpoint=args.checkpoint)
        elif cmd == "sample":
            from .sample import sample

            fields = SampleConfig.__dataclass_fields__
            sample(
                args.run,
                args.prompt,
                SampleConfig(**{k: args[k] for k in fields}),
                checkpoint=args.checkpoint,
            )
        elif cmd == "demo":
            from .demo import demo

            demo(args.run, steps=args.steps, minutes=args.minutes)
    except UserError as e:
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 2
    return 0
