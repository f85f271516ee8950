"""The `scratchlm` command: one subcommand per stage. It parses, then calls one function.

Settings come from the dataclasses in config.py through jsonargparse, merged in this order:
built-in defaults < the run's saved config.yaml < --preset < --config FILE.yaml < --section.option flags
(a --config file is applied where it stands, so flags before it give way to it, as jsonargparse does).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml
from jsonargparse import (
    ActionConfigFile,
    ArgumentParser,
    DefaultHelpFormatter,
    Namespace,
    set_parsing_settings,
)

from .common import UserError
from .config import (
    DEMO_MINUTES,
    PRESETS,
    SECTION_CLASSES,
    SFT_TRAIN_DEFAULTS,
    EvalConfig,
    RunConfig,
    SampleConfig,
    SettingError,
)

set_parsing_settings(docstring_parse_attribute_docstrings=True)


# The sections each command that takes a --config recipe reads; one recipe may hold them all.
RECIPE_SECTIONS = {
    "prepare": ("data", "tokenizer"),
    "train": ("model", "train"),
    "sft": ("train", "sft"),
    "tokenizer train": ("data", "tokenizer"),
}


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
  scratchlm train runs/demo --preset auto --train.max-minutes 10   # the best model for 10 minutes here
  scratchlm train runs/demo --model.n-layer 6 --train.max-steps 2000
  scratchlm train runs/demo --config configs/my-recipe.yaml --train.lr 1e-3
  scratchlm train runs/demo                 # continues from the newest checkpoint""",
    "sft": """examples:
  scratchlm sft runs/chat --from runs/base                    # the bundled Self-Instruct seed tasks
  scratchlm sft runs/chat --from runs/base --input alpaca.jsonl --input chats.jsonl --val-input val.jsonl
  scratchlm sft runs/math --from runs/base --input gsm8k.jsonl --sft.prompt-field question \\
      --sft.response-field answer --sft.epochs 2 --train.lr 1e-4
  scratchlm sft runs/chat                                     # continues from the newest checkpoint""",
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
    "chat": """examples:
  scratchlm chat runs/chat                                  # a model made by `scratchlm sft`
  scratchlm chat runs/chat --system "Answer briefly." --temperature 0.7 --top-p 0.9
  printf 'Hi\\nWho are you?\\n' | scratchlm chat runs/chat --temperature 0   # one reply per line
  (in the chat: /system TEXT, /reset, /temp X, /save FILE, /help; Ctrl-C stops a reply, Ctrl-D quits)""",
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
    "plan": """examples:
  scratchlm plan runs/demo --minutes 5     # what --preset auto --train.max-minutes 5 would train""",
    "demo": """examples:
  scratchlm demo                  # prepare, train, eval and sample into runs/demo
  scratchlm demo --minutes 1      # a shorter training""",
}


def _own_sections(path: str, sections: tuple[str, ...]) -> dict:
    """The sections of recipe `path` that a command reads. One recipe may hold every section of RunConfig
    (train ignores its data: part), but a section or key that RunConfig lacks is a typo, in any section."""
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(e.strerror) from None
    except yaml.MarkedYAMLError as e:
        raise ValueError(f"not valid YAML: {e.problem} (line {e.problem_mark.line + 1})") from None
    if not isinstance(recipe, dict):
        raise ValueError("expected sections such as 'model:' and 'train:' at the top level")
    for section, options in recipe.items():
        if section not in SECTION_CLASSES:
            raise ValueError(f"unknown section '{section}' (known: {', '.join(SECTION_CLASSES)})")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"section '{section}' must hold option: value lines")
        fields = {f.name for f in dataclasses.fields(SECTION_CLASSES[section])}
        for key in options or {}:
            if key not in fields:
                raise ValueError(f"unknown key '{section}.{key}'")
    return {k: v or {} for k, v in recipe.items() if k in sections}


def _recipe_file(sections: tuple[str, ...]) -> type[ActionConfigFile]:
    class RecipeFile(ActionConfigFile):
        """--config FILE.yaml: jsonargparse's config file option, applied where it stands on the command
        line, given the command's own sections of the recipe; its errors name the file."""

        def __call__(self, parser, cfg, values, option_string=None):
            try:
                own = _own_sections(values, sections)
                super().__call__(parser, cfg, yaml.safe_dump(own), option_string)
            except (argparse.ArgumentError, TypeError, ValueError) as e:
                raise argparse.ArgumentError(None, f"--config {values}: {_one_line(str(e), True)}") from None

    return RecipeFile


@contextmanager
def _optionals_as_positionals(on: bool):
    set_parsing_settings(parse_optionals_as_positionals=on)
    try:
        yield
    finally:
        set_parsing_settings(parse_optionals_as_positionals=False)


class _PromptParser(ArgumentParser):
    """`sample RUN --max-new-tokens 20 "Prince"`: argparse gives an optional positional PROMPT its empty
    default as soon as an option follows RUN (jsonargparse has no intermixed parsing), so PROMPT is the
    option --prompt, which
    jsonargparse's parse_optionals_as_positionals also takes by position. The setting is global, so it is
    on only while this parser parses: elsewhere a stray word would silently become some option's value.
    Help leaves it off; it would list every option as a further positional."""

    def parse_args(self, *args, **kwargs):
        with _optionals_as_positionals(True):
            return super().parse_args(*args, **kwargs)

    def format_usage(self) -> str:
        with _optionals_as_positionals(False):
            return super().format_usage()

    def format_help(self) -> str:
        with _optionals_as_positionals(False):
            return super().format_help()


def _one_line(message: str, in_file: bool = False) -> str:
    """A jsonargparse message on one line; 'Parser key "k": Expected a <class 'int'>. Got value: v' (and its
    Union form) said as the option (or the YAML key, in_file), the value and what it must be."""
    message = message.replace("Problems parsing config: ", "")
    m = re.match(r'Parser key "([^"]+)":\s*Expected a (.+?)\. Got value: (.*)', message, re.S)
    if m:
        key, expected, value = m.groups()
        choices = re.match(r"typing\.Literal\[(.*)\]$", expected)
        want = _KINDS.get(expected) or (f"one of {choices.group(1)}" if choices else expected)
        return f"{_option(key, in_file)} {value.strip()}: must be {want}"
    literal = re.sub(r"typing\.Literal\[([^\]]*)\]", r"\1", message)  # int | Literal['auto'] -> 'auto'
    m = re.match(
        r'Parser key "([^"]+)":.*Union subtypes.*Subtypes: \[(.*?)\].*Given value: (.*)', literal, re.S
    )
    if m:  # e.g. --train.compile, a bool | None
        key, subtypes, value = m.groups()
        want = " or ".join(_KINDS.get(t.strip(), t.strip()) for t in subtypes.split(","))
        return f"{_option(key, in_file)} {value.strip()}: must be {want}"
    return " ".join(message.split())


def _option(key: str, in_file: bool = False) -> str:
    """train.max_steps as the user wrote it: --train.max-steps on the command line, as is in a YAML file."""
    return key if in_file else "--" + key.replace("_", "-")


_KINDS = {
    "<class 'int'>": "an integer",
    "<class 'float'>": "a number",
    "<class 'bool'>": "true or false",
    "<class 'NoneType'>": "null",
}


def _subparser(name: str, description: str, parser_class=ArgumentParser) -> ArgumentParser:
    return parser_class(
        prog=f"scratchlm {name}",
        description=description,
        epilog=EXAMPLES.get(name),
        formatter_class=_Formatter,
        # --print_config is ours (see _recipe_options): jsonargparse's prints while parsing, before the
        # run's saved settings are known, and only the command's own sections.
        print_config=None,
    )


def _recipe_options(p: ArgumentParser, command: str, base: RunConfig | None) -> None:
    """--config, --print_config and the --section.option flags of a command that reads a recipe.

    `base` (the run's saved config.yaml with the preset applied) becomes the flags' defaults.
    """
    sections = RECIPE_SECTIONS[command]
    p.add_argument(
        "--config",
        action=_recipe_file(sections),
        metavar="FILE.yaml",
        help=f"recipe: YAML with {' and '.join(sections)} (and other) sections; flags after it override it",
    )
    p.add_argument("--print_config", action="store_true", help="print the merged settings as YAML and exit")
    for section in sections:
        p.add_class_arguments(SECTION_CLASSES[section], section)
    if base is not None:
        p.set_defaults(
            {f"{s}.{k}": v for s in sections for k, v in dataclasses.asdict(getattr(base, s)).items()}
        )


def _resume_options(p: ArgumentParser) -> None:
    """--resume / --fresh of the commands that train (train, sft)."""
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


def _resume_of(args) -> bool | None:
    """The resume of train() and sft(): False starts over, True needs a checkpoint, None continues if any."""
    return False if args.fresh else (True if args.resume else None)


def build_parser(base: RunConfig | None = None) -> ArgumentParser:
    """The whole command line; `base` gives the defaults of prepare, train and tokenizer train."""
    parser = ArgumentParser(
        prog="scratchlm",
        formatter_class=_Formatter,
        description="Train your own small GPT from scratch on your own text.",
        exit_on_error=False,  # errors come to main() as exceptions: one line, not the whole usage
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
        "--overwrite",
        action="store_true",
        help="prepare a run that has been trained: its checkpoints and metrics go to RUN/previous/<time>/",
    )
    _recipe_options(p, "prepare", base)
    subcommands.add_subcommand("prepare", p, help="corpus → tokenizer → token shards")

    p = _subparser("train", "Train (or continue training) the run's model.")
    p.add_argument("run", help="a run directory made by `scratchlm prepare`")
    p.add_argument(
        "--preset",
        choices=[*sorted(PRESETS), "auto"],
        default=None,
        help="model size and schedule: tiny (~1M params), small (~10M), gpt2 (124M), or auto: the best "
        "shape for --train.max-minutes on this machine (see `scratchlm plan`)",
    )
    _resume_options(p)
    _recipe_options(p, "train", base)
    subcommands.add_subcommand("train", p, help="pretrain the model")

    p = _subparser(
        "sft",
        "Instruction-tune a pretrained run on conversations (JSONL) into a new run RUN: a copy of the base's "
        "tokenizer, its best weights as the start, the loss on the assistant replies only.",
    )
    p.add_argument("run", help="the fine-tuned run's directory (new, or one to continue)")
    p.add_argument("--from", dest="base_run", default=None, metavar="BASE_RUN", help="the pretrained run")
    p.add_argument(
        "--input",
        action="append",
        default=None,
        metavar="FILE.jsonl",
        help="conversations: messages, Alpaca, prompt/completion or mapped fields; repeatable; hf:NAME "
        "(default: the bundled Self-Instruct seed tasks)",
    )
    p.add_argument(
        "--val_input", action="append", default=None, metavar="FILE.jsonl", help="validation conversations"
    )
    _resume_options(p)
    _recipe_options(p, "sft", base)
    subcommands.add_subcommand("sft", p, help="instruction tuning (SFT) of a pretrained run")

    p = _subparser(
        "eval",
        "Loss, perplexity and bits per byte with a sliding window; fixed-seed samples; eval.json and "
        "report.md in each RUN; a comparison table for several runs.",
    )
    p.add_argument("runs", nargs="+", help="one or more trained run directories")
    p.add_class_arguments(EvalConfig, None)
    subcommands.add_subcommand("eval", p, help="loss, perplexity, bits per byte")

    p = _subparser(
        "sample", "Continue PROMPT with the run's model, streaming it to the terminal.", _PromptParser
    )
    p.add_argument("run", help="a trained run directory")
    p.add_argument(
        "--prompt",
        default=None,
        metavar="PROMPT",
        help="text to continue, also given by position: sample RUN PROMPT ('' starts from <|bos|>)",
    )
    p.add_argument("--prompts_file", default=None, help='one prompt per line (or .jsonl with "prompt")')
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    p.add_class_arguments(SampleConfig, None)
    subcommands.add_subcommand("sample", p, help="generate text")

    p = _subparser("serve", "An OpenAI-compatible HTTP API (/v1/...) and a chat page (/) for a run's model.")
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api_key", default=None, help="require Authorization: Bearer KEY on /v1/ requests")
    p.add_argument("--max_batch", type=int, default=16, help="sequences decoded together")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    subcommands.add_subcommand("serve", p, help="OpenAI-compatible API + web chat page")
    p = _subparser(
        "chat",
        "Chat with the run's model in the terminal, replies streamed; a base model (not made by "
        "`scratchlm sft`) continues each line as text instead. Piped input: one user turn per line.",
    )
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    p.add_argument("--system", default=None, help="system prompt (default: the one the run was tuned with)")
    p.add_class_arguments(SampleConfig, None)
    subcommands.add_subcommand("chat", p, help="talk to the model")

    p = _subparser("export", "Write the run's model as a Hugging Face folder or a GGUF file.")
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--format", required=True, help="hf (GPT2LMHeadModel / LlamaForCausalLM folder) or gguf")
    p.add_argument("--out", required=True, help="output folder (hf) or .gguf file")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .safetensors file")
    p.add_argument("--dtype", default="f32", help="hf: f32, f16 or bf16; gguf: f32, f16 or q8_0")
    p.add_argument("--force", action="store_true", help="replace --out if an earlier export wrote it")
    subcommands.add_subcommand("export", p, help="to Hugging Face transformers or GGUF (llama.cpp)")

    p = _subparser("import", "Turn a Hugging Face GPT-2 or Llama folder into a scratchlm run.")
    p.add_argument("hf_dir", help="a folder with config.json, model.safetensors and tokenizer files")
    p.add_argument("run", help="the new run directory")
    subcommands.add_subcommand("import", p, help="a Hugging Face GPT-2 / Llama folder → a run")

    p = _subparser(
        "plan",
        "Print what `scratchlm train RUN --preset auto --train.max-minutes M` would train: a few seconds' "
        "probe of this machine's speed and the run's corpus size give the model, batch, steps and memory.",
    )
    p.add_argument("run", help="a run directory made by `scratchlm prepare`")
    p.add_argument("--minutes", type=float, required=True, help="the training time budget")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    subcommands.add_subcommand("plan", p, help="the model and schedule --preset auto picks for M minutes")

    p = _subparser("demo", "The whole pipeline on the bundled book, in a few CPU minutes.")
    p.add_argument("run", nargs="?", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES, help="training time; the plan fills it")
    subcommands.add_subcommand("demo", p, help="prepare, train, eval and sample on the bundled book")

    p = _subparser("tokenizer", "Train, try and inspect the run's tokenizer (RUN/tokenizer/).")
    subcommands.add_subcommand("tokenizer", p, help="train / encode / decode / stats of the tokenizer")
    tok_commands = p.add_subcommands(dest="action")
    q = _subparser("tokenizer train", "Train RUN's tokenizer on the inputs.")
    q.add_argument("run", help="run directory (created if missing)")
    q.add_argument("--input", action="append", default=None, metavar="PATH", help="as for `prepare`")
    q.add_argument("--overwrite", action="store_true", help="replace the run's existing tokenizer")
    _recipe_options(q, "tokenizer train", base)
    tok_commands.add_subcommand("train", q, help="train the tokenizer only")
    q = _subparser("tokenizer encode", "Print the ids of TEXT.")
    q.add_argument("run", help="a run directory with a tokenizer")
    q.add_argument("text", help="text to encode")
    q.add_argument("--allow_special", action="store_true", help='turn "<|eos|>" etc. into special ids')
    tok_commands.add_subcommand("encode", q, help="text → ids")
    q = _subparser("tokenizer decode", "Print the text of IDS.")
    q.add_argument("run", help="a run directory with a tokenizer")
    q.add_argument("ids", nargs="+", help="token ids (spaces or commas between them)")
    tok_commands.add_subcommand("decode", q, help="ids → text")
    q = _subparser("tokenizer stats", "Tokens, bytes and characters per token…")
    q.add_argument("run", help="a run directory with a tokenizer")
    q.add_argument("--text", default=None, help="measure this UTF-8 file (default: the run's inputs)")
    tok_commands.add_subcommand("stats", q, help="compression, byte-fallback rate, longest tokens")
    return parser


def normalize_option_names(argv: list[str]) -> list[str]:
    """Accept --model.n-layer as well as --model.n_layer: jsonargparse names options after the dataclass
    fields and has no dash aliases for them."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def _base_config(run_dir: str, preset: str | None, command: str = "", first=None) -> RunConfig:
    """The run's saved settings with the preset applied: the defaults of the command's options.
    `first`: the first parse's options, for --preset auto (its minutes, device, and whether to start over)."""
    from .run import Run

    run = Run.at(run_dir)
    cfg = run.load_config() if run.has_config() else RunConfig()
    if command == "sft" and not run.has_config():  # a new SFT run: the fine-tuning defaults
        cfg.train = dataclasses.replace(cfg.train, **SFT_TRAIN_DEFAULTS)
    if preset == "auto":
        return _auto_plan(run, cfg, first)
    return cfg.apply_preset(preset) if preset else cfg


def _auto_plan(run, cfg: RunConfig, first) -> RunConfig:
    """--preset auto: plan a new run for the budget; a run with checkpoints continues its planned shape."""
    from .plan import follow_plan

    if run.has_checkpoints() and not first.fresh:
        print(f"--preset auto: {run.root} has checkpoints, so it continues as planned (--fresh plans anew)")
        return cfg
    cfg.train = dataclasses.replace(cfg.train, device=first.train.device)
    return follow_plan(run.root, cfg, first.train.max_minutes)


def _parse(argv: list[str]) -> tuple[str, Namespace, RunConfig | EvalConfig | SampleConfig | None]:
    """The command, its parsed arguments and its settings, every value checked against its range."""
    argv = normalize_option_names(argv)
    try:
        ns = build_parser().parse_args(argv)
        cmd = ns.command
        sub = ns[cmd] if cmd != "tokenizer" else ns[cmd][ns[cmd].action]
        command = cmd if cmd != "tokenizer" else f"tokenizer {ns[cmd].action}"
        if command in RECIPE_SECTIONS:
            # The run's saved settings (and the preset) become the defaults, so this parses twice: RUN is
            # known only after a first parse, and jsonargparse's defaults cannot depend on a parsed value.
            base = _base_config(sub.run, sub.get("preset"), command, first=sub)
            ns = build_parser(base).parse_args(argv)
            sub = ns[cmd] if cmd != "tokenizer" else ns[cmd][ns[cmd].action]
    except argparse.ArgumentError as e:
        message = _one_line(str(e))
        # A bad value names its option already; other mistakes (an unknown option) point to the help.
        hint = "" if message.startswith("--") else f" (see scratchlm {_command_of(argv)}--help)"
        raise UserError(message + hint) from None
    for run in [sub.get("run")] + list(sub.get("runs") or []):
        if run and Path(run).is_file():
            raise UserError(f"{run}: is a file, not a run directory")
    if command in RECIPE_SECTIONS:
        sections = {}
        for s in RECIPE_SECTIONS[command]:
            try:
                sections[s] = _build(SECTION_CLASSES[s], sub[s])
            except SettingError as e:
                raise e.named(_option(f"{s}.{e.name}")) from None
        return command, sub, dataclasses.replace(base, **sections)
    try:
        if cmd == "eval":
            return cmd, sub, _build(EvalConfig, sub)
        if cmd in ("sample", "chat"):
            return cmd, sub, _build(SampleConfig, sub)
    except SettingError as e:
        raise e.named(_option(e.name)) from None
    if cmd in ("demo", "plan") and not sub.minutes > 0:
        raise UserError(f"--minutes {sub.minutes:g}: must be a number > 0")
    return command, sub, None


def _build(cls, ns: Namespace):
    """The dataclass from its parsed options, without jsonargparse's own keys (__path__ of --model FILE)."""
    return cls(**{f.name: ns[f.name] for f in dataclasses.fields(cls)})


def _command_of(argv: list[str]) -> str:
    """`train ` or `tokenizer train ` from the start of argv, for the --help hint of an error."""
    words = argv[: 2 if argv[:1] == ["tokenizer"] else 1]
    return "".join(w + " " for w in words if not w.startswith("-"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd, args, cfg = _parse(argv)
        if cmd == "sft":  # the command's own spellings of sft.base, sft.inputs and sft.val_inputs
            cfg.sft.base = args.base_run or cfg.sft.base
            cfg.sft.inputs = list(args.input or cfg.sft.inputs)
            cfg.sft.val_inputs = list(args.val_input or cfg.sft.val_inputs)
        if args.get("print_config"):
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
        elif cmd == "prepare":
            from .prepare import prepare

            if args.input:
                cfg.data.inputs = list(args.input)
            prepare(args.run, cfg, overwrite=args.overwrite)
        elif cmd == "train":
            from .train import train

            train(args.run, cfg, resume=_resume_of(args))
        elif cmd == "sft":
            from .sft import sft

            sft(args.run, cfg, resume=_resume_of(args))
        elif cmd == "eval":
            from .evaluate import evaluate

            evaluate(list(args.runs), cfg)
        elif cmd == "sample":
            from .sample import read_prompts, sample

            if (args.prompt is None) == (args.prompts_file is None):
                raise UserError(
                    "give a PROMPT or --prompts_file FILE (one of them; quote a PROMPT with spaces)"
                )
            prompts = args.prompt if args.prompts_file is None else read_prompts(args.prompts_file)
            sample(args.run, prompts, cfg, checkpoint=args.checkpoint)
        elif cmd == "serve":
            from .serve import serve

            serve(args.run, args.host, args.port, args.api_key, args.max_batch, args.checkpoint)
        elif cmd == "chat":
            from .chat import chat

            chat(args.run, cfg, checkpoint=args.checkpoint, system=args.system)
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

            demo(args.run, minutes=args.minutes)
        elif cmd == "plan":
            from .plan import print_plan

            print_plan(args.run, args.minutes, args.device)
        elif cmd == "tokenizer train":
            from . import tokenizer_cmd

            if args.input:
                cfg.data.inputs = list(args.input)
            tokenizer_cmd.train_command(args.run, cfg, overwrite=args.overwrite)
        elif cmd == "tokenizer encode":
            from . import tokenizer_cmd

            tokenizer_cmd.encode_command(args.run, args.text, allow_special=args.allow_special)
        elif cmd == "tokenizer decode":
            from . import tokenizer_cmd

            tokenizer_cmd.decode_command(args.run, args.ids)
        elif cmd == "tokenizer stats":
            from . import tokenizer_cmd

            tokenizer_cmd.stats(args.run, text=args.text)
    except UserError as e:
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The file system said no (a read-only run, a full disk, a path that is a file): one line naming the
        # file; anything already computed has been printed before the write that failed.
        where = f"{e.filename}: " if e.filename else ""
        print(f"scratchlm: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C in sample, or a second Ctrl-C in train (the first finishes the step and saves).
        print("\nscratchlm: interrupted", file=sys.stderr)
        return 130
    return 0
