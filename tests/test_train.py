"""The trainer: exact resume after SIGKILL, Ctrl-C, NaN handling, DDP/FSDP parity, optimizers, schedules."""

from __future__ import annotations

import copy
import csv
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.checkpoint import step_dirs
from scratchlm.commands.train import train
from scratchlm.common import UserError, cpu_has_bf16
from scratchlm.config import RunConfig, TrainConfig
from scratchlm.optim import StackedMuon, lr_at
from scratchlm.run import Run

from .conftest import ctrl_c_reaches_it, tiny_config

FAST = ["--train.log-interval", "1", "--train.eval-batches", "2"]
GOLDEN = Path(__file__).parent / "assets" / "golden_loss.json"


def scratchlm_cmd(*args, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "scratchlm", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",  # not torchrun's fixed 29500: two jobs at once would collide
        "-m",
        "scratchlm",
        *args,
    ]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader(open(run / "metrics.csv"))
    return {int(r["step"]): float(r["train_loss"]) for r in rows if r["train_loss"]}


def final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


@pytest.fixture
def prepared_run(tiny_corpus, tmp_path) -> Path:
    from scratchlm.commands.prepare import prepare

    run = tmp_path / "run"
    prepare(run, tiny_config(tiny_corpus))
    return run


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Run `cmd` in the background, its stdout and stderr going to `log` (a pipe nobody reads could fill)."""
    with open(log, "w") as f:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_reaches_it
        )


def wait_until(done, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll `done()` while the child runs; fail with its output if it exits first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"the child exited with {proc.returncode} too early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"still waiting after {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.01)


def last_step(run: Path) -> int:
    return max(losses(run), default=0) if (run / "metrics.csv").exists() else 0


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_sigkill_then_resume_is_bit_identical(prepared_run, tmp_path):
    other = copy_run(prepared_run, tmp_path / "other")
    steps, every = 90, 30
    args = ["--train.max-steps", str(steps), "--train.eval-interval", str(every), *FAST]
    subprocess.run(scratchlm_cmd("train", str(other), *args), check=True, capture_output=True)

    log = tmp_path / "killed.log"
    proc = start(scratchlm_cmd("train", str(prepared_run), *args), log)
    first_checkpoint = prepared_run / "checkpoints" / f"step_{every:06d}"
    # Kill a few steps after the first checkpoint, well before the next one.
    wait_until(lambda: first_checkpoint.exists() and last_step(prepared_run) >= every + 3, proc, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (prepared_run / "checkpoints" / f"step_{steps:06d}").exists()
    killed_at = max(losses(prepared_run))
    assert killed_at > every  # it died after logging steps past the checkpoint

    out = subprocess.run(
        scratchlm_cmd("train", str(prepared_run), "--resume"), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert f"resuming from {first_checkpoint}" in out.stdout or f"step {every})" in out.stdout
    assert losses(prepared_run) == losses(other)  # bit-identical: the CSV holds the same digits
    a, b = final_weights(prepared_run, steps), final_weights(other, steps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_finishes_the_step_saves_and_exits_0(prepared_run, tmp_path):
    log = tmp_path / "interrupted.log"
    proc = start(scratchlm_cmd("train", str(prepared_run), "--train.max-steps", "100000", *FAST), log)
    wait_until(lambda: last_step(prepared_run) >= 5, proc, log)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running 60 s after Ctrl-C:\n{log.read_text()}")
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    saved = step_dirs(Run.at(prepared_run))
    assert saved and int(saved[-1].name.split("_")[1]) == max(losses(prepared_run))


# Each flavour with one of the optimizers: between them every module and both optimizer paths run.
GOLDEN_CASES = {"gpt2-adamw": ("gpt2", "adamw"), "llama-muon": ("llama", "muon")}


def golden_losses(corpus: Path, run: Path, flavour: str, optimizer: str) -> dict[str, list[float]]:
    """20 steps of a tiny model on one CPU thread in float32: the train loss of every step, the val loss."""
    from scratchlm.commands.prepare import prepare

    cfg = tiny_config(corpus)
    cfg.tokenizer.kind = "char"  # counted, so no tokenizer library's threads or version moves the ids
    cfg.model.flavour = flavour
    cfg.train = dataclasses.replace(
        cfg.train,
        optimizer=optimizer,
        lr=3e-3,
        max_steps=20,
        warmup_steps=5,
        eval_interval=20,
        log_interval=1,
    )
    # Threads pinned: another count may sum in another order (1 and 2 gave the same digits here).
    cfg.train = dataclasses.replace(cfg.train, device="cpu", dtype="float32", threads=1, deterministic=True)
    prepare(run, cfg)
    train(run, cfg)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return {
        "train_loss": [float(r["train_loss"]) for r in rows if r["train_loss"]],
        "val_loss": [float(r["val_loss"]) for r in rows if r["val_loss"]],
    }


def test_losses_equal_the_golden_file(tiny_corpus, tmp_path):
    """An unintended change to the model, optimizer, schedule, data order or init fails here.

    For an intended one, rewrite the file with SCRATCHLM_UPDATE_GOLDEN=1 pytest tests/test_train.py -k golden
    and say in the commit why the numbers moved."""
    import json

    got = {name: golden_losses(tiny_corpus, tmp_path / name, *case) for name, case in GOLDEN_CASES.items()}
    if os.environ.get("SCRATCHLM_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"rewrote {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    assert got.keys() == want.keys()
    for name in want:
        for key in want[name]:
            assert got[name][key] == pytest.approx(want[name][key], abs=1e-4), (name, key)


def test_nan_loss_stops_with_the_last_good_checkpoint(prepared_run, monkeypatch):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.eval_interval = 20, 5
    original = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 12 and kwargs.get("reduction", "mean") == "mean" else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(UserError, match=r"last good checkpoint: .*step_0000(05|10)"):
        train(prepared_run, cfg)

    calls["n"] = 0
    cfg.train.on_nan = "skip"
    result = train(prepared_run, cfg, resume=False)
    assert result["skipped_steps"] == 1 and result["step"] == 20


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(prepared_run, tmp_path, fsdp):
    two = copy_run(prepared_run, tmp_path / "two")
    common = ["--train.max-steps", "8", "--train.eval-interval", "4", *FAST]
    one = subprocess.run(
        scratchlm_cmd("train", str(prepared_run), "--train.batch-size", "8", *common),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    extra = ["--train.fsdp", "true"] if fsdp else []
    out = subprocess.run(
        scratchlm_cmd("train", str(two), "--train.batch-size", "4", *common, *extra, nproc=2),
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    a, b = losses(prepared_run), losses(two)
    assert a.keys() == b.keys() and len(a) == 8
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    # The 2-process checkpoint resumes in one process (another world size).
    more = subprocess.run(
        scratchlm_cmd("train", str(two), "--train.max-steps", "10", "--train.batch-size", "8"),
        capture_output=True,
        text=True,
    )
    assert more.returncode == 0 and "resuming from" in more.stdout, more.stderr


def test_muon_trains(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.optimizer, cfg.train.lr, cfg.train.max_steps = "muon", 2e-2, 30
    train(prepared_run, cfg)
    got = losses(prepared_run)
    assert got[30] < got[1] - 0.8


def test_stacked_muon_steps_exactly_as_torch_muon():
    """Ours orthogonalises same-shaped matrices in one batched run; the weights and state must not notice."""
    shapes = [(96, 32), (32, 32), (96, 32), (32, 80), (32, 32)]  # repeated shapes, tall, wide and square
    torch.manual_seed(0)
    start = [torch.randn(s) * 0.02 for s in shapes]
    ours = [torch.nn.Parameter(w.clone()) for w in start]
    theirs = [torch.nn.Parameter(w.clone()) for w in start]
    kwargs = dict(lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    opt_ours, opt_theirs = StackedMuon(ours, **kwargs), torch.optim.Muon(theirs, **kwargs)
    opt_ours.ns_dtype = torch.bfloat16  # torch's precision, whatever this CPU runs fastest
    for _ in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b, w in zip(ours, theirs, start, strict=True):
        assert not torch.equal(a, w)  # they moved
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt_ours.state_dict()["state"], opt_theirs.state_dict()["state"])


def test_muon_orthogonalises_the_parts_of_a_fused_matrix_as_separate_matrices():
    """Attention's [q; k; v] and SwiGLU's [up; gate] are one Linear each for speed; Muon must step them as
    the separate matrices they are (with GQA's narrower k and v), not as one tall matrix."""
    from scratchlm.config import ModelConfig, TrainConfig
    from scratchlm.model import GPT
    from scratchlm.optim import fused_row_blocks, make_optimizers

    torch.manual_seed(0)
    cfg = ModelConfig(
        flavour="llama", n_layer=1, n_head=4, n_kv_head=2, n_embd=32, block_size=16, vocab_size=64
    )
    model = GPT(cfg)
    muon = make_optimizers(model, TrainConfig(optimizer="muon", lr=1e-2, weight_decay=0.1))[0]
    attn, mlp = model.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].mlp.c_fc.weight
    assert fused_row_blocks(model) == {id(attn): [32, 16, 16], id(mlp): [mlp.size(0) // 2] * 2}
    parts = [torch.nn.Parameter(w.detach().clone()) for w in (*attn.split([32, 16, 16]), *mlp.chunk(2))]
    separate = StackedMuon(parts, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(2):
        x = torch.randint(0, 64, (2, 16))
        model.zero_grad()
        model(x, x)[1].backward()
        for part, grad in zip(parts, (*attn.grad.split([32, 16, 16]), *mlp.grad.chunk(2)), strict=True):
            part.grad = grad.clone()
        if step == 0:  # what orthogonalising the fused matrix whole would give: a different step
            whole = torch.nn.Parameter(attn.detach().clone())
            whole.grad = attn.grad.clone()
            StackedMuon([whole], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw").step()
        muon.step()
        separate.step()
        if step == 0:
            assert (whole - attn).abs().max() > 1e-4
    torch.testing.assert_close(torch.cat(parts[:3]), attn.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(parts[3:]), mlp.detach(), rtol=0, atol=1e-6)


def test_muon_momentum_setting_reaches_the_optimizer_and_changes_the_step():
    """--train.muon-momentum is Muon's momentum (AdamW's part keeps its betas); a different momentum moves
    the weights differently from the second step on, when the buffer carries the first gradient."""
    from scratchlm.config import ModelConfig, TrainConfig
    from scratchlm.model import GPT
    from scratchlm.optim import make_optimizers

    def weights_after_two_steps(momentum: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = GPT(
            ModelConfig(flavour="llama", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
        )
        opts = make_optimizers(model, TrainConfig(optimizer="muon", muon_momentum=momentum))
        assert opts[0].param_groups[0]["momentum"] == momentum
        for _ in range(2):
            x = torch.randint(0, 64, (2, 16))
            model(x, x)[1].backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
        return model.transformer.h[0].attn.c_attn.weight.detach().clone()

    assert not torch.allclose(weights_after_two_steps(0.9), weights_after_two_steps(0.95))


def test_newton_schulz_in_float32_orthogonalises_as_bfloat16_does():
    """On a CPU without bfloat16 instructions StackedMuon orthogonalises in float32 (70x faster there): the
    same map up to bfloat16's rounding."""
    from scratchlm.optim import _orthogonalise

    torch.manual_seed(0)
    g = torch.randn(3, 64, 160)
    coefficients = torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))]).defaults["ns_coefficients"]
    f32 = _orthogonalise(g, coefficients, 5, 1e-7, torch.float32)
    bf16 = _orthogonalise(g, coefficients, 5, 1e-7, torch.bfloat16).float()
    assert f32.dtype == torch.float32
    assert (f32 - bf16).abs().max() < 0.05 and (f32 - bf16).abs().mean() < 0.01
    singular = torch.linalg.svdvals(f32)  # Newton-Schulz's quintic: singular values near 1, not exactly
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_batch_tokens_sets_gradient_accumulation(prepared_run, capsys):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.batch_tokens = 2, 4, 4 * 64 * 3
    train(prepared_run, cfg)
    assert "768 tokens per step (1 x 4 x 3 x 64)" in capsys.readouterr().out
    cfg.train.batch_tokens = 1000
    with pytest.raises(UserError, match="not a multiple of batch_size x block_size"):
        train(prepared_run, cfg, resume=False)


def test_max_tokens_sets_the_number_of_steps(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_tokens = 8 * 64 * 5 + 1
    assert train(prepared_run, cfg)["step"] == 6


def test_train_leaves_the_callers_settings_as_they_were(prepared_run):
    """Batch size auto, the steps that max_tokens gives and the tokenizer's vocabulary are resolved into the
    session's own settings: the caller's RunConfig is unchanged, and the saved config holds the numbers, so
    a resume is exact."""
    from scratchlm.tokenizer import Tokenizer

    cfg = tiny_config(Path("unused"))
    cfg.train.batch_size, cfg.train.batch_tokens, cfg.train.max_tokens = "auto", 2048, 2 * 2048
    before = copy.deepcopy(cfg)
    assert train(prepared_run, cfg)["step"] == 2
    assert cfg == before
    saved = Run.at(prepared_run).load_config()
    assert isinstance(saved.train.batch_size, int) and saved.train.batch_tokens == 2048
    assert saved.train.max_steps == 2
    vocab = Tokenizer.load(prepared_run / "tokenizer").vocab_size
    assert saved.model.vocab_size == vocab != cfg.model.vocab_size


def test_a_stage_sets_the_number_of_steps_through_its_data(prepared_run):
    """TrainData.max_steps (what SFT derives from its epochs) replaces --train.max-steps for the session."""
    from scratchlm.pretraining import pretraining_data
    from scratchlm.trainer import fit

    def three_steps(s):
        return dataclasses.replace(pretraining_data(s), max_steps=3)

    cfg = tiny_config(Path("unused"))
    assert fit(prepared_run, cfg, three_steps)["step"] == 3
    assert cfg.train.max_steps == 60 and Run.at(prepared_run).load_config().train.max_steps == 3


def test_max_minutes_stops_with_a_checkpoint_and_the_budget_spans_resumes(prepared_run, capsys):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.max_minutes = 100_000, 0.05
    result = train(prepared_run, cfg)
    assert 1 <= result["step"] < 100_000
    out = capsys.readouterr().out
    assert "stopped at step" in out
    # The clock, not the step cap, says how far the run gets: the lines count towards its estimate.
    assert re.search(r"step +1/~\d+ .* min, \d+\.\d min left", out), out
    assert "/100000" not in out
    # Its stop names the command that trains on; a plain resume would find the budget spent.
    more = f"`scratchlm train {prepared_run} --train.max-minutes 0.1`"
    assert f"(--train.max-minutes 0.05) is spent; to train on, give the run more: {more}" in out
    assert "resumes" not in out
    saved = step_dirs(Run.at(prepared_run))
    assert saved[-1].name == f"step_{result['step']:06d}"
    assert max(losses(prepared_run)) == result["step"]
    # The budget is for the run, not the session: resuming with it spent trains nothing, raising it trains on.
    assert train(prepared_run, cfg)["step"] == result["step"]
    assert f"nothing to do: raise --train.max_minutes to train on, e.g. {more}" in capsys.readouterr().out
    cfg.train.max_minutes = 0.0
    cfg.train.max_steps = result["step"] + 2
    assert train(prepared_run, cfg)["step"] == result["step"] + 2


def lr_rows(run: Path) -> list[dict]:
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r["lr"]]


def test_a_clock_budget_carries_the_schedule_to_its_minimum_inside_the_budget(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.max_minutes, cfg.train.eval_interval = 100_000, 0.15, 100_000
    cfg.train.log_interval = 1  # every step's lr: a busy machine's slow steps leave no gap in the rows
    t0 = time.time()
    result = train(prepared_run, cfg)
    took = time.time() - t0
    # The session's setup (before the first step) is not on the clock; the final evaluation and save are.
    assert took <= 0.15 * 60 + 3, took
    assert step_dirs(Run.at(prepared_run))[-1].name == f"step_{result['step']:06d}"
    rows = lr_rows(prepared_run)
    assert float(rows[-1]["elapsed_s"]) == pytest.approx(0.15 * 60)  # stopped by the clock: budget spent
    assert float(rows[-1]["lr"]) == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)
    # It decayed along the way, not in one jump at the end: cosine, so most of the way by 85% of the clock.
    # Every row before the last from there on, so a step slowed by a busy machine still leaves some.
    late = [float(r["lr"]) for r in rows[:-1] if 0.85 * 9 < float(r["elapsed_s"])]
    assert late and all(lr < 0.2 * cfg.train.lr for lr in late), rows[-5:]


def test_max_steps_reached_before_the_clock_says_so(prepared_run, capsys):
    """A preset's 2,000 steps end a 30-minute budget after 6 minutes: the user is told, not left guessing."""
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.max_minutes = 3, 10.0
    assert train(prepared_run, cfg)["step"] == 3
    assert "reached --train.max-steps 3 after 0.0 of the 10 minutes" in capsys.readouterr().out


def test_a_slow_first_step_does_not_end_a_clock_budget_early(prepared_run, monkeypatch):
    """torch.compile's first step takes ~30 s here: as the step time, it ended 1-minute runs at step 2."""
    from scratchlm.model import GPT

    forward, calls = GPT.forward, {"n": 0}

    def compiling_first(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(3.0)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", compiling_first)
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.max_minutes, cfg.train.eval_interval = 100_000, 0.15, 100_000
    assert train(prepared_run, cfg)["step"] > 10


def test_a_resumed_clock_budget_counts_the_earlier_minutes_and_ends_at_the_minimum(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.max_minutes, cfg.train.eval_interval = 100_000, 0.2, 20
    cfg.train.schedule, cfg.train.keep_last = "wsd", 1000
    first = train(prepared_run, cfg)
    # Take the run back to its checkpoint at roughly the first third of the budget, as a kill would leave it.
    kept = [d for d in step_dirs(Run.at(prepared_run)) if int(d.name[5:]) <= first["step"] // 3]
    for d in step_dirs(Run.at(prepared_run)):
        if d not in kept:
            shutil.rmtree(d)
    rows = lr_rows(prepared_run)
    cut = [r for r in rows if int(r["step"]) == int(kept[-1].name[5:]) and r["val_loss"]][-1]
    t0 = time.time()
    second = train(prepared_run, cfg)
    assert time.time() - t0 <= 0.2 * 60 - float(cut["elapsed_s"]) + 3  # only what was left of the budget
    rows = lr_rows(prepared_run)
    resumed = [r for r in rows if int(r["step"]) > int(cut["step"])]
    assert float(resumed[0]["elapsed_s"]) >= float(cut["elapsed_s"])  # the clock went on from the checkpoint
    assert float(rows[-1]["lr"]) == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)
    assert step_dirs(Run.at(prepared_run))[-1].name == f"step_{second['step']:06d}"


def test_tensorboard_logs_train_and_val_losses(prepared_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.tensorboard = 30, True
    train(prepared_run, cfg)
    events = EventAccumulator(str(prepared_run / "tensorboard"))
    events.Reload()
    train_curve = {e.step: e.value for e in events.Scalars("loss/train")}
    assert train_curve == pytest.approx(losses(prepared_run), abs=1e-4)
    assert any(tag.startswith("loss/val") for tag in events.Tags()["scalars"])


def test_resume_refuses_a_changed_model_but_takes_a_changed_dropout(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps = 3
    train(prepared_run, cfg)
    cfg.train.max_steps = 5
    cfg.model.n_layer = 3
    with pytest.raises(UserError, match=r"step_000003: --model.n_layer 3 \(checkpoint: 2\); .* --fresh"):
        train(prepared_run, cfg)
    cfg.model.n_layer, cfg.model.dropout = 2, 0.1
    assert train(prepared_run, cfg)["step"] == 5


def test_resume_refuses_a_changed_tokenizer(prepared_run, tiny_corpus):
    import shutil

    from scratchlm.commands.prepare import prepare

    cfg = tiny_config(tiny_corpus)
    cfg.train.max_steps = 3
    train(prepared_run, cfg)
    # Prepared again by hand with another tokenizer of the same size (prepare itself refuses a trained run):
    # the shards agree with it, the checkpoint not.
    shutil.rmtree(prepared_run / "tokenizer")
    shutil.rmtree(prepared_run / "data")
    (prepared_run / "checkpoints").rename(prepared_run.parent / "kept")
    cfg.tokenizer.kind = "bpe"
    prepare(prepared_run, cfg)
    (prepared_run.parent / "kept").rename(prepared_run / "checkpoints")
    cfg.train.max_steps = 5
    with pytest.raises(UserError, match=r"step_000003: the run's tokenizer changed since this checkpoint"):
        train(prepared_run, cfg)


def test_train_puts_back_the_torch_settings_it_changes(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.deterministic, cfg.train.threads = 2, True, 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(prepared_run, cfg)
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)


def test_a_failed_checkpoint_write_keeps_the_last_good_one_and_resumes(prepared_run, monkeypatch):
    import scratchlm.checkpoint as checkpoint

    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.eval_interval = 6, 3
    real_save, calls = torch.save, {"n": 0}

    def disk_full_on_the_second_checkpoint(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full_on_the_second_checkpoint)
    with pytest.raises(
        UserError, match=r"step_000006: could not write .*No space left.* last complete one is .*step_000003"
    ):
        train(prepared_run, cfg)
    assert [p.name for p in (prepared_run / "checkpoints").iterdir() if "step" in p.name] == ["step_000003"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert train(prepared_run, cfg)["step"] == 6


def test_resume_without_checkpoint_is_a_user_error(prepared_run):
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(prepared_run, tiny_config(Path("unused")), resume=True)


def test_schedules():
    cos = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(60, cos) == pytest.approx(0.55) and lr_at(110, cos) == pytest.approx(0.1)
    wsd = TrainConfig(
        lr=1.0, warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0
    )
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(90, wsd) == pytest.approx(0.5) and lr_at(100, wsd) == pytest.approx(0.0)
    const = TrainConfig(lr=1.0, warmup_steps=10, schedule="constant")
    assert lr_at(5000, const) == 1.0


def test_schedules_on_the_clock():
    # Warmup stays in steps; the decay follows the share of the time budget spent, whatever max_steps says.
    cos = TrainConfig(lr=1.0, warmup_steps=10, max_steps=10**6, min_lr_ratio=0.1)
    assert lr_at(0, cos, progress=0.0) == pytest.approx(0.1)
    assert lr_at(9, cos, progress=0.001) == pytest.approx(1.0, abs=1e-4)
    # The lower of the two: the warmup ramp (0.6 at step 5) or the decay (0.122 at 90 % of the clock).
    assert lr_at(5, cos, progress=0.1) == pytest.approx(0.6) and lr_at(5, cos, progress=0.9) == pytest.approx(
        0.1221, abs=1e-4
    )
    assert lr_at(500, cos, progress=0.5) == pytest.approx(0.55) and lr_at(500, cos, progress=1.0) == 0.1
    assert lr_at(500, cos, progress=1.7) == pytest.approx(0.1)  # past the budget: stays at the minimum
    wsd = TrainConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(500, wsd, progress=0.5) == 1.0 and lr_at(500, wsd, progress=0.8) == 1.0
    assert lr_at(500, wsd, progress=0.9) == pytest.approx(0.5) and lr_at(500, wsd, progress=1.0) == 0.0
    const = TrainConfig(lr=1.0, warmup_steps=10, schedule="constant")
    assert lr_at(500, const, progress=1.0) == 1.0 and lr_at(4, const, progress=0.5) == pytest.approx(0.5)


def test_checkpoint_keeps_config_and_tokenizer_hash(prepared_run):
    import json

    from scratchlm.checkpoint import read_metadata
    from scratchlm.tokenizer import Tokenizer

    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps = 3
    # The caller sets the vocabulary (the trainer no longer writes the tokenizer's size into its settings).
    cfg.model.vocab_size = Tokenizer.load(prepared_run / "tokenizer").vocab_size
    train(prepared_run, cfg)
    meta = read_metadata(step_dirs(Run.at(prepared_run))[-1] / "model.safetensors")
    assert RunConfig.from_dict(json.loads(meta["config"])).model == cfg.model
    assert meta["tokenizer_hash"] == Tokenizer.load(prepared_run / "tokenizer").hash
    state = torch.load(step_dirs(Run.at(prepared_run))[-1] / "state.pt", weights_only=True)
    assert state["step"] == 3 and "loader" in state and "rng" in state


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", marks=pytest.mark.slow),
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
            ],
        ),
    ],
)
def test_bf16_compiled_training_learns_resumes_and_loads_as_fp32_on_cpu(prepared_run, device, capsys):
    """The GPU defaults (bf16 autocast, torch.compile, fused AdamW, TF32) train and resume, and the checkpoint
    they write is ordinary fp32 that loads and samples on the CPU. The cpu case turns the same options on by
    hand, so the compiled bf16 path runs in CI where no GPU is lent."""
    from scratchlm import load

    cfg = tiny_config(Path("unused"))
    cfg.train.device, cfg.train.max_steps, cfg.train.eval_interval = device, 60, 30
    if device == "cpu":
        cfg.train.compile, cfg.train.dtype = True, "bfloat16"
    train(prepared_run, cfg)
    got = losses(prepared_run)
    assert got[60] < got[1] - 0.8
    if device == "cpu" and not cpu_has_bf16():
        assert "no bfloat16 instructions" in capsys.readouterr().err
    cfg.train.max_steps = 70
    assert train(prepared_run, cfg)["step"] == 70
    lm = load(prepared_run, device="cpu")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in lm.model.parameters())
    assert isinstance(lm.generate("The", max_new_tokens=5, temperature=0.0), str)


def test_max_steps_reached_before_the_clock_budget_still_ends_at_the_minimum(prepared_run):
    cfg = tiny_config(Path("unused"))
    cfg.train.max_steps, cfg.train.max_minutes, cfg.train.eval_interval = 12, 30.0, 6
    train(prepared_run, cfg)
    rows = [r for r in csv.DictReader(open(prepared_run / "metrics.csv")) if r["train_loss"]]
    assert int(rows[-1]["step"]) == 12
    assert float(rows[-1]["lr"]) == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio)
