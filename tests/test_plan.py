"""The automatic plan (--preset auto, `scratchlm plan`), the memory estimate and --train.batch-size auto."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from scratchlm import planning
from scratchlm.cli import main
from scratchlm.commands.prepare import prepare
from scratchlm.config import RunConfig
from scratchlm.lm import load
from scratchlm.optim import lr_at
from scratchlm.run import Run
from scratchlm.settings import resolve

from .conftest import tiny_config


@pytest.fixture
def prepared(tiny_corpus, tmp_path) -> Path:
    run = tmp_path / "run"
    prepare(run, tiny_config(tiny_corpus))
    return run


def fake_speed(rates: dict[tuple[int, int], float]):
    """A probe reporting `rates[layers, width]` tokens/s, not timing steps (the rule, not this machine)."""

    def probe(shape, vocab, device, **kwargs):
        cfg = planning._model_config(shape, vocab)
        return planning.Probe(shape, "float32", rates[shape.n_layer, shape.n_embd], planning._params(cfg))

    return probe


FAST = {
    (2, 128): 60_000,
    (4, 128): 40_000,
    (4, 192): 25_000,
    (6, 256): 12_000,
    (6, 384): 5_000,
    (8, 512): 2_000,
    (12, 768): 500,
    (24, 1024): 100,
}


def test_more_minutes_buy_a_larger_model_until_the_corpus_is_the_limit(prepared, monkeypatch):
    monkeypatch.setattr(planning, "probe", fake_speed(FAST))
    monkeypatch.setattr(planning, "MAX_PARAMS_PER_TOKEN", 1e9)  # the corpus is not the limit here
    shapes = [planning.make_plan(prepared, RunConfig(), m).chosen.shape for m in (0.2, 2, 30, 600)]
    sizes = [(s.n_embd, s.n_layer) for s in shapes]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    p = planning.make_plan(prepared, RunConfig(), 2)
    # The chosen shape sees at least MIN_TOKENS_PER_PARAM tokens per parameter in the budget.
    assert p.train_tokens >= planning.MIN_TOKENS_PER_PARAM * p.chosen.params * 0.99
    assert p.settings["train"]["max_minutes"] == 2 and p.rows * p.steps * p.chosen.shape.block_size > 0


def test_short_plans_lower_muons_momentum_and_raise_adamws_beta2_and_long_ones_keep_the_defaults(
    prepared, monkeypatch
):
    monkeypatch.setattr(planning, "probe", fake_speed(FAST))
    short, long = (planning.make_plan(prepared, RunConfig(), m) for m in (2, 600))
    assert short.steps <= planning.SHORT_PLAN_STEPS < long.steps
    assert short.settings["train"]["muon_momentum"] == planning.SHORT_PLAN_MOMENTUM
    assert short.settings["train"]["beta2"] == planning.SHORT_PLAN_BETA2
    assert "(momentum 0.9, AdamW beta2 0.99)" in short.lines()[2]
    assert not {"muon_momentum", "beta2"} & set(long.settings["train"]) and "momentum" not in long.lines()[2]


def test_a_plan_holds_its_peak_rate_then_decays_to_zero_over_the_clocks_last_40_percent(
    prepared, monkeypatch
):
    monkeypatch.setattr(planning, "probe", fake_speed(FAST))
    plan = planning.make_plan(prepared, RunConfig(), 3.5)
    assert (
        "(momentum 0.9, AdamW beta2 0.99) until the last 40% of the minutes, then decaying to 0"
        in plan.lines()[2]
    )
    cfg = resolve(Run.at(prepared), "train", preset=plan.settings).train
    peak, past_warmup = cfg.lr, cfg.warmup_steps + 1
    # Not a cosine already on its way down at a third of the minutes: the peak until 60% of them.
    assert [lr_at(past_warmup, cfg, progress=p) for p in (0.1, 0.35, 0.6)] == [peak] * 3
    assert lr_at(past_warmup, cfg, progress=0.8) == pytest.approx(peak / 2)
    assert lr_at(past_warmup, cfg, progress=1.0) == 0.0


def test_a_shape_that_read_slower_than_a_costlier_one_is_measured_again(prepared, monkeypatch):
    """A VM slowed for a second during the 2 x 128 probe: it read 4,452 tokens/s against 4 x 128's 6,357, and
    the plan took 17 rows a step where the machine's speed called for ~40."""
    readings = {(2, 128): [4_452, 11_000], (4, 128): [6_357]}
    calls = []

    def probe(shape, vocab, device, rows=planning.PROBE_ROWS, **kwargs):
        key = (shape.n_layer, shape.n_embd)
        calls.append((*key, rows))
        rate = readings[key].pop(0) if len(readings.get(key, [])) > 1 else readings.get(key, [FAST[key]])[0]
        params = planning._params(planning._model_config(shape, vocab))
        return planning.Probe(shape, "float32", rate, params, rows)

    monkeypatch.setattr(planning, "probe", probe)
    plan = planning.make_plan(prepared, RunConfig(), 3.5)
    assert plan.chosen.shape.n_layer == 2 and calls[:3] == [(2, 128, 8), (4, 128, 8), (2, 128, 8)]
    assert plan.chosen.tokens_per_s == 11_000 and "2x128 11,000, 4x128 6,357" in plan.lines()[0]
    train_s = 3.5 * 60 * (1 - planning.EVAL_SHARE)
    assert plan.rows == planning._rows(11_000 * train_s, plan.chosen.shape)
    # A steady machine's readings fall with each costlier shape: no shape is measured twice at 8 rows.
    steady, calls = fake_speed(FAST), []

    def recorded(shape, *args, rows=planning.PROBE_ROWS, **kwargs):
        calls.append((shape.n_layer, shape.n_embd, rows))
        return steady(shape, *args, **kwargs)

    monkeypatch.setattr(planning, "probe", recorded)
    planning.make_plan(prepared, RunConfig(), 3.5)
    assert len(calls) == len(set(calls)) >= 2


def test_the_chosen_shape_is_timed_again_at_the_rows_it_will_train(prepared, monkeypatch):
    """More rows a step use the cores better: the demo's 2 x 128 read 7,078 tokens/s at the probe's 8 rows
    and trained at ~9,000 at 28, so the plan said ~348 steps and trained 499. Timed at the rows planned
    from the first reading, the plan sizes its batch and counts its steps at the training's speed."""
    calls = []

    def probe(shape, vocab, device, rows=planning.PROBE_ROWS, dtypes=None, **kwargs):
        calls.append((shape.n_layer, rows, dtypes))
        rate = 7_000 if rows <= 8 else 9_100
        params = planning._params(planning._model_config(shape, vocab))
        return planning.Probe(shape, "float32", rate, params, rows)

    monkeypatch.setattr(planning, "probe", probe)
    monkeypatch.setattr(planning, "LADDER", planning.LADDER[:1])
    plan = planning.make_plan(prepared, RunConfig(), 3.5)
    train_s = 3.5 * 60 * (1 - planning.EVAL_SHARE)
    first_rows = planning._rows(7_000 * train_s, plan.chosen.shape)
    assert calls == [(2, 8, None), (2, first_rows, ["float32"])]  # again at its rows, in its dtype only
    assert plan.chosen.tokens_per_s == 9_100 and plan.rows == planning._rows(
        9_100 * train_s, plan.chosen.shape
    )
    assert plan.rows > first_rows and f"9,100 tokens/s at {first_rows} rows" in plan.lines()[2]
    assert plan.steps == planning.steps_in_budget(
        3.5 * 60, plan.rows * 128 / 9_100, plan.chosen.params, RunConfig().train.eval_batches
    )

    # A GPU too small for the training's rows: the ladder's reading stands (training then says so).
    def out_of_memory(shape, vocab, device, rows=planning.PROBE_ROWS, **kwargs):
        if rows > planning.PROBE_ROWS:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return probe(shape, vocab, device, rows)

    monkeypatch.setattr(planning, "probe", out_of_memory)
    kept = planning.make_plan(prepared, RunConfig(), 3.5)
    assert kept.chosen.tokens_per_s == 7_000 and kept.rows == first_rows
    # A budget whose two steps at those rows would take over 2% of it keeps the first reading.
    monkeypatch.setattr(planning, "probe", probe)
    calls.clear()
    monkeypatch.setattr(planning, "_rows", lambda tokens, shape: 256)
    planning.make_plan(prepared, RunConfig(), 0.05)
    assert calls == [(2, 8, None)]


def test_a_small_corpus_caps_the_model_whatever_the_minutes(prepared, monkeypatch):
    monkeypatch.setattr(planning, "probe", fake_speed(FAST))
    p = planning.make_plan(prepared, RunConfig(), 600)
    assert (
        p.chosen.params <= planning.MAX_PARAMS_PER_TOKEN * p.corpus_tokens
        or p.chosen.shape == planning.LADDER[0]
    )
    assert "parameters per corpus token" in p.why


def test_scratchlm_plan_prints_the_plan_from_a_real_probe(prepared, capsys):
    assert main(["plan", str(prepared), "--minutes", "1"]) == 0
    out = capsys.readouterr().out
    for word in ("parameters", "tokens a step", "epochs", "peak", "finish", "--preset auto"):
        assert word in out, out


def test_preset_auto_trains_the_plan_and_a_second_call_continues_it(prepared, capsys):
    # On the CPU, as CI: a GPU affords a larger shape than the 2-layer one in the same 6 seconds.
    args = ["--preset", "auto", "--train.max-minutes", "0.1", "--train.device", "cpu"]
    assert main(["train", str(prepared), *args]) == 0
    out = capsys.readouterr().out
    saved = yaml.safe_load((prepared / "config.yaml").read_text())
    assert saved["train"]["max_minutes"] == 0.1 and saved["train"]["optimizer"] == "muon"
    assert f"{saved['model']['n_layer']} layers x {saved['model']['n_embd']} wide" in out
    # A minute's plan is the 2-layer shape, whose head is a matrix of its own that trains apart.
    assert saved["model"]["n_layer"] == 2 and "untied embeddings" in out
    model = load(prepared).model
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    # Flags still win over the plan, and a run with checkpoints keeps its shape instead of planning anew.
    assert main(["train", str(prepared), "--preset", "auto", "--train.max-minutes", "0.2"]) == 0
    assert "continues in its planned shape" in capsys.readouterr().out
    assert yaml.safe_load((prepared / "config.yaml").read_text())["model"] == saved["model"]


def test_preset_auto_names_the_flags_that_replace_its_choices(prepared, capsys):
    args = ["train", str(prepared), "--preset", "auto", "--train.max-minutes", "0.05", "--fresh"]
    assert main([*args, "--train.lr", "0.0123", "--train.batch-size", "3"]) == 0
    out = capsys.readouterr().out
    saved = yaml.safe_load((prepared / "config.yaml").read_text())["train"]
    assert saved["lr"] == 0.0123 and saved["batch_size"] == 3
    yours = next(line for line in out.splitlines() if line.strip().startswith("yours:"))
    assert "--train.lr 0.0123 for" in yours and "--train.batch-size 3 for" in yours, yours
    # The budget the plan was made for is the user's own value, not a replacement.
    assert "max-minutes" not in yours
    assert main(args) == 0
    assert "yours:" not in capsys.readouterr().out


def test_preset_auto_without_minutes_is_one_line(prepared, capsys):
    assert main(["train", str(prepared), "--preset", "auto"]) == 2
    assert "--train.max-minutes" in capsys.readouterr().err


def test_largest_fitting_batch_stops_at_the_first_that_does_not_fit():
    assert planning.largest_fitting(lambda b: b <= 40, 256) == 32
    assert planning.largest_fitting(lambda b: True, 100) == 64
    assert planning.largest_fitting(lambda b: False, 100) == 0


def test_batch_size_auto_on_cpu_keeps_tokens_per_step(prepared, capsys):
    assert (
        main(
            [
                "train",
                str(prepared),
                "--train.batch-size",
                "auto",
                "--train.batch-tokens",
                "2048",
                "--train.max-steps",
                "2",
            ]
        )
        == 0
    )
    saved = yaml.safe_load((prepared / "config.yaml").read_text())["train"]
    assert isinstance(saved["batch_size"], int) and saved["batch_tokens"] == 2048
    assert "tokens per step" in capsys.readouterr().out


MEASURE = """
import dataclasses, json, sys
from scratchlm import planning as plan, trainer  # what `train` has imported when the plan measures itself
from scratchlm.cli import main
from scratchlm.run import Run
run, layers, width, block, rows, optimizer = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
baseline = plan._rss()
cfg = Run.at(run).load_config()
model = dataclasses.replace(cfg.model, n_layer=layers, n_embd=width, n_head=width // 64, block_size=block)
main(["train", run, "--fresh", f"--model.n_layer={layers}", f"--model.n_embd={width}",
      f"--model.n_head={width // 64}", f"--model.block_size={block}", f"--train.batch_size={rows}",
      f"--train.optimizer={optimizer}", "--train.max_steps=2", "--train.eval_batches=1"])
model.vocab_size = Run.at(run).load_config().model.vocab_size
estimate = plan.estimate_memory(model, rows, optimizer, False, baseline).total
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"estimate": estimate, "peak": peak}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc (Linux)")
@pytest.mark.parametrize(
    "shape", [(4, 256, 256, 32, "adamw"), (6, 384, 256, 32, "adamw"), (8, 512, 512, 8, "muon")]
)
def test_memory_estimate_is_within_25_percent_of_the_measured_peak(prepared, shape):
    """Shapes whose training state is several times the process's own ~250 MB, so the check has teeth."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(prepared), *map(str, shape)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert 0.75 <= r["estimate"] / r["peak"] <= 1.25, r
    assert r["peak"] > 3 * 250 * 2**20  # the model, not the Python process, dominates what was measured


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_size_auto_on_cuda_finds_a_batch_that_trains(prepared, capsys):
    """The OOM-safe probe: doubling real steps until one does not fit, then training at the result."""
    args = [
        "train",
        str(prepared),
        "--train.device",
        "cuda",
        "--train.batch-size",
        "auto",
        "--train.max-steps",
        "2",
    ]
    assert main([*args, "--train.batch-tokens", str(2**20)]) == 0
    saved = yaml.safe_load((prepared / "config.yaml").read_text())["train"]
    assert saved["batch_size"] >= 1 and saved["batch_tokens"] % (saved["batch_size"] * 64) == 0


def test_batch_probe_takes_out_of_memory_as_does_not_fit():
    """The CUDA probe's step, on any machine: a model that runs out of memory above 16 rows."""
    from scratchlm.config import ModelConfig
    from scratchlm.model import GPT

    class Bounded(GPT):
        def forward(self, idx, targets=None, cache=None):
            if idx.size(0) > 16:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(idx, targets, cache)

    model = Bounded(ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=16))
    before = torch.random.get_rng_state()
    fits = planning.largest_fitting(
        lambda b: planning._fits_on_gpu(model, b, 8, torch.device("cpu"), contextlib.nullcontext()), 1024
    )
    assert fits == 16
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients behind
    assert torch.equal(before, torch.random.get_rng_state())  # nor a shifted random stream


def test_a_tiny_budget_plans_no_more_steps_than_it_trains(prepared, monkeypatch, capsys):
    """3 s promised dozens of steps and trained a few (0.6 s: 12 and 2): the first evaluation and save,
    and the final one, take most of a short budget, and the plan now counts them."""
    from scratchlm.commands.train import train

    monkeypatch.setattr(planning, "LADDER", planning.LADDER[:1])
    planned = planning.make_plan(prepared, RunConfig(), 0.05)
    trained = train(prepared, preset="auto", train={"max_minutes": 0.05})["step"]
    assert 1 <= planned.steps <= trained, (planned.steps, trained)


def test_the_step_estimate_counts_evaluations_and_saves():
    """A minute at 0.1 s a step is 600 steps of compute; the evaluations (first, every quarter, last) and
    their checkpoint writes take their share, and the bigger the model the more its writes cost."""
    small = planning.steps_in_budget(60, 0.1, 1_000_000, eval_batches=20)
    assert 400 < small < 600
    assert planning.steps_in_budget(60, 0.1, 100_000_000, eval_batches=20) < small
    assert planning.steps_in_budget(1, 0.1, 1_000_000, eval_batches=20) == 1


def test_a_context_given_with_the_plan_is_planned_at(prepared, monkeypatch, capsys):
    """A base meant for `sft` needs its conversations to fit: `--preset auto --model.block-size 512` (and
    `scratchlm plan --context 512`) probe and size every shape at 512, rather than laying 512 over rows
    planned for the shape's own context."""
    monkeypatch.setattr(planning, "probe", fake_speed(FAST))
    own = planning.make_plan(prepared, RunConfig(), 2)
    p = planning.make_plan(prepared, RunConfig(), 2, context=512)
    assert own.chosen.shape.block_size != 512 and p.chosen.shape.block_size == 512
    assert p.settings["model"]["block_size"] == 512 and "context 512" in p.lines()[1]
    assert p.rows * 512 <= planning.MAX_STEP_TOKENS and p.rows * 512 == pytest.approx(
        own.rows * own.chosen.shape.block_size, rel=0.35
    )
    from scratchlm.commands.train import train

    asked = dict(preset="auto", model={"block_size": 512}, train={"max_minutes": 2})
    cfg = train(prepared, **asked, print_config=True)
    assert cfg.model.block_size == 512 and cfg.train.batch_size == p.rows
    assert main(["plan", str(prepared), "--minutes", "2", "--context", "512"]) == 0
    assert "--model.block-size 512" in capsys.readouterr().out
