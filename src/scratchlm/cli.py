"""The `scratchlm` command, built from the command functions (commands/) and the config dataclasses.

Each command's options come from its function's signature and docstring, and the flags of its settings
sections from the dataclasses in config.py (jsonargparse). The CLI parses only what was given and calls the
function with it, so `scratchlm train RUN --train.lr 1e-3` and `scratchlm.train(RUN, train=dict(lr=1e-3))`
resolve the same settings (settings.resolve) and write the same config.yaml.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import re
import sys
import typing
from collections import abc
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

from .allocator import kept_freed_memory
from .common import UserError
from .config import SECTION_CLASSES, EvalConfig, SampleConfig
from .settings import COMMAND_SECTIONS, FLAGS, FLAT_FLAGS

set_parsing_settings(docstring_parse_attribute_docstrings=True)

# name → "module:function" under scratchlm.commands; the table the CLI is built from and dispatches by.
COMMANDS: dict[str, str] = {
    "prepare": "prepare:prepare",
    "train": "train:train",
    "sft": "sft:sft",
    "eval": "eval:evaluate",
    "sample": "sample:sample",
    "chat": "chat:chat",
    "serve": "serve:serve",
    "export": "export:export",
    "import": "import_hf:import_hf",
    "plan": "plan:plan",
    "demo": "demo:demo",
    "tokenizer train": "tokenizer:train",
    "tokenizer encode": "tokenizer:encode",
    "tokenizer decode": "tokenizer:decode",
    "tokenizer stats": "tokenizer:stats",
}
SUMMARIES = {
    "prepare": "corpus → tokenizer → token shards",
    "train": "pretrain the model",
    "sft": "instruction tuning (SFT) of a pretrained run",
    "eval": "loss, perplexity, bits per byte",
    "sample": "generate text",
    "chat": "talk to the model",
    "serve": "OpenAI-compatible API + web chat page",
    "export": "to Hugging Face transformers, GGUF (llama.cpp, Ollama), ONNX or a browser page",
    "import": "a Hugging Face GPT-2 / Llama folder → a run",
    "plan": "the model and schedule --preset auto picks for M minutes",
    "demo": "prepare, train, eval and sample on the bundled book",
    "tokenizer": "train / encode / decode / stats of the tokenizer",
}
# The flat settings dataclass of the commands whose options are unprefixed (--temperature, --stride).
FLAT_SECTIONS = {"sample": SampleConfig, "chat": SampleConfig, "serve": SampleConfig, "eval": EvalConfig}
# Parameters spelt otherwise on the command line.
FLAG_NAMES = {"recipe": "config", "base": "from"}
PYTHON_ONLY = {"config", "origin", "top", "settings"}

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
  scratchlm export runs/demo --format gguf --out demo.gguf --dtype q8_0  # llama.cpp; demo.Modelfile: Ollama
  scratchlm export runs/demo --format web --out demo-web               # a page that runs it in the browser
  scratchlm export runs/demo --format onnx --out exports/demo-onnx     # transformers.js / onnxruntime
  scratchlm export runs/demo --format hf --out exports/demo-hf --checkpoint last --force
  (where each goes next: docs/deploy.md)""",
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


def command_function(name: str) -> Callable:
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(f"scratchlm.commands.{module}"), function)


class _Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the examples in --help."""


class _PromptParser(ArgumentParser):
    """`sample RUN --max-new-tokens 20 "Prince"`: argparse gives an optional positional PROMPT its empty
    default as soon as an option follows RUN (jsonargparse has no intermixed parsing), so PROMPT is the
    option --prompt, which jsonargparse's parse_optionals_as_positionals also takes by position. The setting
    is global, so it is on only while this parser parses: elsewhere a stray word would silently become some
    option's value. Help leaves it off; it would list every option as a further positional."""

    def parse_args(self, *args, **kwargs):
        with _optionals_as_positionals(True):
            return super().parse_args(*args, **kwargs)

    def format_usage(self) -> str:
        with _optionals_as_positionals(False):
            return super().format_usage()

    def format_help(self) -> str:
        with _optionals_as_positionals(False):
            return super().format_help()


@contextmanager
def _optionals_as_positionals(on: bool):
    set_parsing_settings(parse_optionals_as_positionals=on)
    try:
        yield
    finally:
        set_parsing_settings(parse_optionals_as_positionals=False)


def _docs(fn: Callable) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and the per-parameter help of a command function's docstring."""
    import docstring_parser

    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    description = " ".join(filter(None, [doc.short_description, doc.long_description])).split("\n\n")[0]
    return " ".join(description.split()), {p.arg_name: " ".join(p.description.split()) for p in doc.params}


def _is_bool(annotation) -> bool:
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def _is_list(annotation) -> bool:
    kinds = (list, abc.Sequence)
    return typing.get_origin(annotation) in kinds or any(
        typing.get_origin(a) in kinds for a in typing.get_args(annotation)
    )


def _add_parameter(p: ArgumentParser, name: str, param: inspect.Parameter, annotation, help: str) -> None:
    """One function parameter as an argument: positional before `*`, an option after it; bools are switches,
    lists repeat (--input A --input B), everything else is typed and checked by jsonargparse."""
    flag = "--" + FLAG_NAMES.get(name, name)
    required = param.default is inspect.Parameter.empty
    if name == "prompt":  # an option that _PromptParser also takes by position
        p.add_argument(flag, dest=name, default=None, metavar="PROMPT", help=help)
    elif param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
        nargs = "+" if _is_list(annotation) else (None if required else "?")
        p.add_argument(name, nargs=nargs, help=help)
    elif _is_bool(annotation):
        p.add_argument(flag, dest=name, action="store_true", default=None, help=help)
    elif _is_list(annotation):
        p.add_argument(flag, dest=name, action="append", default=None, metavar="PATH", help=help)
    elif name == "recipe":
        p.add_argument(flag, dest=name, default=None, metavar="FILE.yaml", help=help)
    else:
        default = None if required else param.default
        p.add_argument(flag, dest=name, type=annotation, required=required, default=default, help=help)


def _parameter_types(fn: Callable) -> dict[str, object]:
    """The parameters' annotations, evaluated (the modules use `from __future__ import annotations`); the
    return annotation is left alone, since it may name a class imported only for type checking."""
    names = {**vars(typing), **fn.__globals__}
    return {
        name: eval(param.annotation, names) if isinstance(param.annotation, str) else param.annotation
        for name, param in inspect.signature(fn).parameters.items()
        if param.annotation is not inspect.Parameter.empty
    }


def _command_parser(name: str, fn: Callable) -> ArgumentParser:
    description, docs = _docs(fn)
    parser_class = _PromptParser if name == "sample" else ArgumentParser
    p = parser_class(
        prog=f"scratchlm {name}",
        description=description,
        epilog=EXAMPLES.get(name.split()[0]),
        formatter_class=_Formatter,
        # --print_config is ours: jsonargparse's prints while parsing, before the settings are resolved.
        print_config=None,
    )
    hints = _parameter_types(fn)
    sections = COMMAND_SECTIONS.get(name, ()) if name not in FLAT_SECTIONS else ()
    for pname, param in inspect.signature(fn).parameters.items():
        if pname in PYTHON_ONLY or pname in sections or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        _add_parameter(p, pname, param, hints.get(pname), docs.get(pname, ""))
    for section in sections:
        p.add_class_arguments(SECTION_CLASSES[section], section)
    if name in FLAT_SECTIONS:
        p.add_class_arguments(FLAT_SECTIONS[name], None)
    return p


def build_parser(only: str | None = None) -> ArgumentParser:
    """The command line, one subcommand per entry of COMMANDS (only those of command `only` when given: a
    command's own parser is all it needs, and building the others costs half a second)."""
    parser = ArgumentParser(
        prog="scratchlm",
        formatter_class=_Formatter,
        description="Train your own small GPT from scratch on your own text.",
        exit_on_error=False,  # errors come to main() as exceptions: one line, not the whole usage
    )
    subcommands = parser.add_subcommands(dest="command")
    groups: dict[str, ArgumentParser] = {}
    for name in COMMANDS:
        group, _, action = name.partition(" ")
        if only and group != only:
            continue
        p = _command_parser(name, command_function(name))
        if not action:
            subcommands.add_subcommand(name, p, help=SUMMARIES[name])
            continue
        if group not in groups:
            groups[group] = ArgumentParser(
                prog=f"scratchlm {group}",
                description=SUMMARIES[group],
                epilog=EXAMPLES.get(group),
                formatter_class=_Formatter,
            )
            subcommands.add_subcommand(group, groups[group], help=SUMMARIES[group])
            groups[group].add_subcommands(dest="action")
        groups[group]._subcommands_action.add_subcommand(action, p, help=p.description)
    return parser


def normalize_option_names(argv: list[str], command: str | None = None) -> list[str]:
    """Accept --model.n-layer as well as --model.n_layer: jsonargparse names options after the dataclass
    fields and has no dash aliases for them. A list setting given one plain value (--sft.inputs my.jsonl,
    --stop END, where jsonargparse wants [a,b]) appends it, as --sft.inputs+ my.jsonl would."""
    lists = _list_options(command)
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            given = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            if name in lists and given is not None and not given.lstrip().startswith("["):
                name += "+"
            arg = "--" + name + eq + value
        out.append(arg)
    return out


@functools.cache
def _list_options(command: str | None) -> frozenset[str]:
    """The options of `command` whose setting is a list and nothing else (eval's --tasks also takes a
    string): every section's as section.name, and the flat ones of sample, chat, serve and eval."""

    def lists(cls) -> list[str]:
        hints = typing.get_type_hints(cls).items()
        return [name for name, kind in hints if typing.get_origin(kind) in (list, abc.Sequence)]

    dotted = {f"{section}.{name}" for section, cls in SECTION_CLASSES.items() for name in lists(cls)}
    flat = lists(FLAT_SECTIONS[command]) if command in FLAT_SECTIONS else []
    return frozenset(dotted.union(flat))


def parse(argv: list[str]) -> tuple[str, dict]:
    """The command and the keyword arguments of its function: only what the command line gave."""
    first = next((a for a in argv if not a.startswith("-")), None)
    argv = normalize_option_names(argv, first)
    try:
        ns = build_parser(first if first in SUMMARIES else None).parse_args(argv, defaults=False).as_dict()
    except argparse.ArgumentError as e:
        message = _one_line(str(e))
        # A bad value names its option already; other mistakes (an unknown option) point to the help.
        hint = "" if message.startswith("--") else f" (see scratchlm {_command_of(argv)}--help)"
        raise UserError(message + hint) from None
    name = ns.pop("command")
    given = ns.get(name) or {}
    if "action" in given:  # tokenizer train|encode|...
        action = given["action"]
        name, given = f"{name} {action}", given.get(action) or {}
    given = {k: v for k, v in given.items() if v is not None and not k.startswith("__")}
    if name in FLAT_SECTIONS:
        given["origin"] = FLAT_FLAGS
    elif "origin" in inspect.signature(command_function(name)).parameters:
        given["origin"] = FLAGS
    for run in [given.get("run")] + list(given.get("runs") or []):
        if run and Path(run).is_file():
            raise UserError(f"{run}: is a file, not a run directory")
    return name, given


def _one_line(message: str) -> str:
    """A jsonargparse message on one line; 'Parser key "k": Expected a <class 'int'>. Got value: v' (and its
    Union form) said as the option, the value and what it must be."""
    message = message.replace("Problems parsing config: ", "")
    m = re.match(r'Parser key "([^"]+)":\s*Expected a (.+?)\. Got value: (.*)', message, re.S)
    if m:
        key, expected, value = m.groups()
        choices = re.match(r"typing\.Literal\[(.*)\]$", expected)
        want = _KINDS.get(expected) or (f"one of {choices.group(1)}" if choices else expected)
        return f"{_option(key)} {value.strip()}: must be {want}"
    literal = re.sub(r"typing\.Literal\[([^\]]*)\]", r"\1", message)  # int | Literal['auto'] -> 'auto'
    m = re.match(
        r'Parser key "([^"]+)":.*Union subtypes.*Subtypes: \[(.*?)\].*Given value: (.*)', literal, re.S
    )
    if m:  # e.g. --train.compile, a bool | None
        key, subtypes, value = m.groups()
        want = " or ".join(_KINDS.get(t.strip(), t.strip()) for t in subtypes.split(","))
        return f"{_option(key)} {value.strip()}: must be {want}"
    return " ".join(message.split())


def _option(key: str) -> str:
    """train.max_steps as the user wrote it on the command line: --train.max-steps."""
    return "--" + key.replace("_", "-")


_KINDS = {
    "<class 'int'>": "an integer",
    "<class 'float'>": "a number",
    "<class 'bool'>": "true or false",
    "<class 'NoneType'>": "null",
}


def _command_of(argv: list[str]) -> str:
    """`train ` or `tokenizer train ` from the start of argv, for the --help hint of an error."""
    words = argv[: 2 if argv[:1] == ["tokenizer"] else 1]
    return "".join(w + " " for w in words if not w.startswith("-"))


def run_command(name: str, kwargs: dict) -> None:
    """Call the command's function with what the command line gave."""
    command_function(name)(**kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with kept_freed_memory():  # every command's large tensors reused between steps (allocator.py)
            run_command(*parse(argv))
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
