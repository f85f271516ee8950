"""The one settings resolution: (run directory, command, preset, recipe file, flags or keyword arguments)
→ a validated, frozen RunConfig.

Every command and every Python call goes through `resolve`, once, before anything is written; nothing
rewrites the result afterwards. The layers, each overriding the one before:

    built-in defaults (or a whole RunConfig given by a Python caller)
      < the run's saved config.yaml
      < the SFT defaults, for a new `sft` run
      < the preset (a name from config.PRESETS, or the automatic plan's settings)
      < the recipe file (--config FILE.yaml / recipe=...)
      < flags / keyword sections (train=dict(lr=1e-3))

Every layer passes the same unknown-key check and the same range checks, and an error names where the value
came from: the file and key, or the flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .common import UserError
from .config import (
    PRESETS,
    SECTION_CLASSES,
    SFT_TRAIN_DEFAULTS,
    RunConfig,
    SettingError,
    check_keys,
    did_you_mean,
)
from .run import Run

# The sections each command reads from a recipe, flags or keyword arguments; a recipe may hold them all.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("data", "tokenizer"),
    "tokenizer train": ("data", "tokenizer"),
    "train": ("model", "train"),
    "sft": ("train", "sft"),
    "sample": ("sample",),
    "chat": ("sample",),
    "serve": ("sample",),
}
# The commands that take a recipe file (--config) and print their settings (--print_config).
RECIPE_COMMANDS = ("prepare", "tokenizer train", "train", "sft")


@dataclasses.dataclass
class Layer:
    """One source of settings: its values by section, and how to name one of its keys in a message."""

    values: dict[str, dict[str, Any]]
    origin: str  # FLAGS or FLAT_FLAGS, a file path, "scratchlm.train()", "--preset tiny"

    def name(self, section: str, key: str) -> str:
        return setting_name(self.origin, section, key)


def setting_name(origin: str, section: str, key: str) -> str:
    """A setting as the user gave it: --train.lr on the command line (--top-p for the unprefixed options of
    sample, chat, serve and eval), FILE: train.lr in a file, scratchlm.train(): train.lr in Python."""
    dotted = f"{section}.{key}" if section else key
    if origin == FLAGS:
        return f"--{dotted}".replace("_", "-")
    if origin == FLAT_FLAGS:
        return f"--{key}".replace("_", "-")
    return f"{origin}: {dotted}"


FLAGS = "--section.key"  # the command line: --train.lr
FLAT_FLAGS = "--key"  # sample, chat and serve take their one section's options unprefixed: --top-p


def resolve(
    run: str | Path | Run,
    command: str,
    *,
    config: RunConfig | None = None,
    preset: str | Mapping | None = None,
    recipe: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    origin: str = FLAGS,
) -> RunConfig:
    """The run's settings for `command`, checked and frozen.

    config: a whole RunConfig to start from instead of the defaults and the run's config.yaml.
    preset: a name in config.PRESETS, or {section: {key: value}} (the automatic plan's settings).
    overrides: {section: dict or that section's dataclass} (a dataclass replaces the whole section);
        origin names them in messages: FLAGS or FLAT_FLAGS for the command line, "scratchlm.train()" for a
        Python call.
    """
    run = run if isinstance(run, Run) else Run.at(run)
    layers = base_layers(run, command, config)
    if preset is not None:
        layers.append(_preset_layer(preset))
    sections = COMMAND_SECTIONS.get(command, tuple(SECTION_CLASSES))
    if recipe is not None:
        layers.append(Layer(read_recipe(recipe, sections), str(recipe)))
    if overrides:
        layers.append(_override_layer(overrides, sections, origin))
    cfg = _build(layers)  # a new object: frozen in place
    cfg.validate()
    return cfg.freeze()


def as_paths(value: Any) -> list[str] | None:
    """One path or a list of them (what --input repeats) as a list of strings; None stays None."""
    if value is None:
        return None
    return [str(value)] if isinstance(value, (str, Path)) else [str(p) for p in value]


def with_inputs(data: Mapping[str, Any] | None, inputs: Any) -> dict[str, Any]:
    """The data section with `input` as data.inputs."""
    data = dict(data or {})
    if inputs:
        data["inputs"] = as_paths(inputs)
    return data


def base_layers(run: Run, command: str, config: RunConfig | None) -> list[Layer]:
    """Defaults, or the caller's whole RunConfig, or the run's saved config.yaml; the SFT defaults."""
    if config is not None:
        if not isinstance(config, RunConfig):
            raise UserError(f"config=...: expected a RunConfig, got {type(config).__name__}")
        return [Layer(config.to_dict(), "config=")]
    if run.has_config():
        return [Layer(run.load_config().to_dict(), str(run.config_path))]
    if command == "sft":  # a new SFT run: fine-tuning defaults, whoever calls
        return [Layer(RunConfig().to_dict(), "defaults"), Layer({"train": dict(SFT_TRAIN_DEFAULTS)}, "sft")]
    return [Layer(RunConfig().to_dict(), "defaults")]


def read_recipe(path: str | Path, sections: tuple[str, ...]) -> dict[str, dict]:
    """The sections of recipe `path` a command reads. One recipe may hold every section of RunConfig (train
    ignores its data: part), but a section or key that RunConfig lacks is a typo, in any section."""
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    except yaml.MarkedYAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e.problem} (line {e.problem_mark.line + 1})") from None
    check_keys(recipe, str(path))
    return {k: dict(v or {}) for k, v in recipe.items() if k in sections}


def _preset_layer(preset: str | Mapping) -> Layer:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise UserError(f"--preset {preset}: use one of {', '.join([*sorted(PRESETS), 'auto'])}")
        return Layer({s: dict(v) for s, v in PRESETS[preset].items()}, f"--preset {preset}")
    check_keys(dict(preset), "the automatic plan")
    return Layer({s: dict(v) for s, v in preset.items()}, "--preset auto")


def _override_layer(overrides: Mapping[str, Any], sections: tuple[str, ...], origin: str) -> Layer:
    values: dict[str, dict] = {}
    for section, given in overrides.items():
        if given is None:
            continue
        if section not in sections:
            raise UserError(f"{origin}: {section}=...: this command takes only {', '.join(sections)}")
        values[section] = section_values(section, given)
    check_keys(values, origin if origin not in (FLAGS, FLAT_FLAGS) else "")
    return Layer(values, origin)


def section_values(section: str, given: Any) -> dict[str, Any]:
    """A section's settings given as its dataclass (which then replaces the whole section) or as a dict of
    the fields to change."""
    cls = SECTION_CLASSES[section]
    if isinstance(given, cls):
        return dataclasses.asdict(given)
    if isinstance(given, Mapping):
        return dict(given)
    raise UserError(f"{section}=...: expected a {cls.__name__} or a dict, got {type(given).__name__}")


def _build(layers: list[Layer]) -> RunConfig:
    """Merge the layers and build the config; a bad value is reported as the layer that set it."""
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTION_CLASSES}
    setter: dict[tuple[str, str], Layer] = {}
    for layer in layers:
        for section, values in layer.values.items():
            for key, value in (values or {}).items():
                merged[section][key] = value
                setter[section, key] = layer
    try:
        return RunConfig.from_dict(merged)
    except SettingError as e:
        section, _, key = e.name.partition(".")
        layer = setter.get((section, key))
        raise e.named(layer.name(section, key) if layer else e.name) from None


def changes(before: RunConfig, after: RunConfig) -> list[str]:
    """One line per setting that differs: 'train.lr 0.003 → 0.001'."""
    old, new = before.to_dict(), after.to_dict()
    return [
        f"{section}.{key} {_shown(old[section][key])} → {_shown(value)}"
        for section, values in new.items()
        for key, value in values.items()
        if old[section].get(key) != value
    ]


def _shown(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()
    )


def announce_changes(run: Run, cfg: RunConfig) -> None:
    """A run that continues with settings other than its saved ones says so, one line per setting."""
    if run.has_checkpoints() and run.has_config():
        for line in changes(run.load_config(), cfg):
            print(f"{line} for this run")


def with_tokenizer_vocab(run: Run, cfg: RunConfig) -> RunConfig:
    """The model's vocabulary is the run's tokenizer's (a RunConfig built by hand carries the default)."""
    from .tokenizer import Tokenizer, exists

    if not exists(run.tokenizer_dir):
        return cfg
    vocab = Tokenizer.load(run.tokenizer_dir).vocab_size
    return cfg if cfg.model.vocab_size == vocab else cfg.replace(model={"vocab_size": vocab})


def build_section(cls: type, base: Any, values: Mapping[str, Any], origin: str) -> Any:
    """One settings dataclass outside RunConfig (eval's) from its base and the given values, with the same
    unknown-key and range checks as resolve."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            where = "" if origin in (FLAGS, FLAT_FLAGS) else f"{origin}: "
            raise UserError(f"{where}unknown setting '{key}'{did_you_mean(key, known)}")
    try:
        return dataclasses.replace(base if base is not None else cls(), **values)
    except SettingError as e:
        raise e.named(setting_name(FLAT_FLAGS if origin == FLAGS else origin, "", e.name)) from None


def print_settings(cfg: RunConfig) -> RunConfig:
    """--print_config: the resolved settings as YAML on stdout (nothing is written); returns them."""
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
    return cfg
