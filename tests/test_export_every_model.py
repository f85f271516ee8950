"""Every model scratchlm can train exports: each architecture a preset, a configs/*.yaml recipe or the
automatic plan can choose, shrunk to a tiny model, matches scratchlm in transformers (logits) and in
llama.cpp (greedy ids)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import scratchlm
from scratchlm import planning
from scratchlm.config import PRESETS, ModelConfig
from scratchlm.formats import import_run
from scratchlm.formats import write_export as export
from scratchlm.formats.adapters import export_blocker

from .conftest import missing_tool
from .test_export import greedy, llama_cpp_greedy, llama_cpp_llama, make_run, prepared, prompt_ids  # noqa: F401
from .test_export_onnx import empty_past, run_step

transformers = pytest.importorskip("transformers")

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# What decides the architecture (sizes aside): the options a tiny model keeps from its source.
ARCH_KEYS = ("flavour", "qk_norm", "bias", "tie_embeddings", "activation", "rope_theta", "norm_eps")


def sources() -> dict[str, ModelConfig]:
    """Every model a user gets without hand-picking options: presets, recipes, and the plan's ladder (the
    plan picks one of its shapes, whatever the minutes or corpus, and gives it PLANNED_MODEL's options)."""
    out = {f"preset {name}": ModelConfig(**p.get("model", {})) for name, p in PRESETS.items()}
    for path in CONFIGS:
        recipe = yaml.safe_load(path.read_text()) or {}
        preset = PRESETS.get(recipe.get("preset"), {}).get("model", {})
        out[f"configs/{path.name}"] = ModelConfig(**{**preset, **(recipe.get("model") or {})})
    for shape in planning.LADDER:
        out[f"plan {shape.n_layer}x{shape.n_embd}"] = planning._model_config(shape, 4096)
    return out


def architecture(cfg: ModelConfig) -> dict:
    """The options of a tiny model with cfg's architecture: 2 layers, 64 wide, 2 heads (1 key/value head
    where cfg groups its queries), a hidden MLP width of its own where cfg sets one."""
    arch = {k: getattr(cfg, k) for k in ARCH_KEYS}
    arch["n_kv_head"] = 1 if cfg.kv_heads != cfg.n_head else 0
    arch["mlp_hidden"] = 160 if cfg.mlp_hidden else 0
    return arch


SOURCES = sources()
ARCHITECTURES: dict[str, dict] = {}
for _name, _cfg in SOURCES.items():
    _arch = architecture(_cfg)
    if _arch not in ARCHITECTURES.values():
        ARCHITECTURES[_name] = _arch


@pytest.mark.parametrize("name", SOURCES)
def test_no_preset_recipe_or_plan_is_refused(name):
    assert export_blocker(SOURCES[name]) is None


def test_the_plan_says_nothing_about_export():
    assert planning.unexportable_note(planning._model_config(planning.LADDER[0], 4096)) == []


def test_the_walk_covers_qk_norm_and_both_flavours():
    seen = {(a["flavour"], a["qk_norm"]) for a in ARCHITECTURES.values()}
    assert {("gpt2", False), ("llama", True)} <= seen


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_matches_in_transformers_and_llama_cpp(prepared, tmp_path, name):  # noqa: F811
    """Logits equal in transformers' own class and after `scratchlm import`; greedy ids equal in llama.cpp."""
    run = make_run(prepared, tmp_path / "run", kind="bpe", **ARCHITECTURES[name])
    lm = scratchlm.load(run)
    export(run, "hf", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = prompt_ids(lm, "Prince Andrew said that")
    with torch.no_grad():
        ours = lm.model(torch.tensor([ids]))[0][0]
        torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], ours, atol=1e-4, rtol=0)
        back = scratchlm.load(import_run(tmp_path / "hf", tmp_path / "imported"))  # and `scratchlm import`
        assert back.config.model.qk_norm == lm.config.model.qk_norm
        torch.testing.assert_close(back.model(torch.tensor([ids]))[0][0], ours, atol=1e-5, rtol=0)

    export(run, "gguf", tmp_path / "m.gguf", dtype="f32")
    assert_llama_cpp_agrees(lm, tmp_path / "m.gguf", ids, ours)


def assert_llama_cpp_agrees(lm, path: Path, ids: list[int], ours: torch.Tensor, distinct: int = 4) -> None:
    """llama.cpp's logits for the prompt `ids` near scratchlm's (`ours`), and its greedy ids equal (and not
    one token repeated: at least `distinct` different ones)."""
    Llama = llama_cpp_llama()
    llm = Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        # llama.cpp's kernels land within ~3e-3 of torch (tests/test_export.py); a wrong map is off by O(1).
        np.testing.assert_allclose(np.asarray(llm.scores[: len(ids)]), ours.numpy(), atol=1e-2, rtol=0)
        want = greedy(lm, ids)
        theirs = llama_cpp_greedy(llm, ids, len(want), lm.tokenizer.eos_id)
        assert theirs == want and len(set(want)) >= distinct, (want, theirs)
    finally:
        llm.close()


def _auto_model(run: Path):
    """The run's model, its prompt ids and scratchlm's logits for them; the model is the plan's."""
    lm = scratchlm.load(run)
    cfg = lm.config.model
    assert (cfg.flavour, cfg.qk_norm, cfg.bias) == ("llama", True, False), "not what the plan trains"
    ids = prompt_ids(lm, "Prince Andrew said that")
    with torch.no_grad():
        return lm, ids, lm.model(torch.tensor([ids]))[0][0]


def test_a_preset_auto_run_exports_to_transformers_a_web_page_and_llama_cpp(preset_auto_run, tmp_path):
    """The model `--preset auto` trains (README's and the demo's path), as trained rather than built:
    Qwen3ForCausalLM in transformers, and a web folder whose GGUF llama.cpp runs as scratchlm does."""
    lm, ids, ours = _auto_model(preset_auto_run)
    export(preset_auto_run, "hf", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], ours, atol=1e-4, rtol=0)

    site = export(preset_auto_run, "web", tmp_path / "site")  # the CDN runtime: the browser test has vendor/
    assert {"index.html", "page.js", "page.css", "model.gguf", "scratchlm.json"} <= {
        p.name for p in site.iterdir()
    }
    assert json.loads((site / "scratchlm.json").read_text())["n_ctx"] == lm.config.model.block_size
    # Trained for seconds (fewer on a busy machine), the model may repeat one token from the first: the
    # logits at every prompt position, within 1e-2, are what tells a wrong map (off by O(1)) here.
    assert_llama_cpp_agrees(lm, site / "model.gguf", ids, ours, distinct=1)


def test_a_preset_auto_run_exports_to_onnx(preset_auto_run, tmp_path):
    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")):
        missing_tool("needs onnx, onnxscript and onnxruntime: pip install 'scratchlm[onnx]'")
    import onnxruntime

    lm, ids, ours = _auto_model(preset_auto_run)
    export(preset_auto_run, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "onnx" / "model.onnx"))
    x = np.array([ids], dtype=np.int64)
    logits, _ = run_step(session, x, np.ones_like(x), empty_past(session, 1))
    np.testing.assert_allclose(logits[0], ours.numpy(), atol=1e-4, rtol=0)


def test_plan_and_train_name_the_flag_for_a_model_export_refuses():
    note = planning.unexportable_note(ModelConfig(flavour="llama", qk_norm=True, bias=True))
    assert len(note) == 1 and "refuses it" in note[0] and "--model.bias false" in note[0]
