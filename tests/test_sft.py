"""`scratchlm sft`: a tiny base fine-tuned on a few Q/A pairs answers them; the loss covers replies only and
is normalised per supervised token; resume is exact; mistakes are one line."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch

from scratchlm.chat_template import render, stop_ids
from scratchlm.checkpoint import load, step_dirs
from scratchlm.cli import main
from scratchlm.commands.sft import sft
from scratchlm.config import SFT_TRAIN_DEFAULTS, RunConfig, SampleConfig
from scratchlm.decode import generate_ids
from scratchlm.run import Run
from scratchlm.trainer import Session, TrainData, _train_step

QA = [
    ("What is the capital of France?", "Paris."),
    ("Who wrote War and Peace?", "Leo Tolstoy."),
    ("What colour is the sky?", "Blue."),
    ("How many legs has a cat?", "Four."),
]


def write_qa(path: Path, pairs=QA) -> Path:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in pairs
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sft_config(base: Path, inputs: list[Path], steps: int = 0) -> RunConfig:
    cfg = RunConfig()
    for key, value in SFT_TRAIN_DEFAULTS.items():
        setattr(cfg.train, key, value)
    cfg.sft.base, cfg.sft.inputs = str(base), [str(p) for p in inputs]
    cfg.sft.val_inputs = [str(p) for p in inputs]  # memorising is the point here
    cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps = 4, 1e-2, 5
    cfg.train.eval_interval, cfg.train.log_interval = 40, 5
    if steps:
        cfg.sft.epochs, cfg.train.max_steps = 0, steps
    else:
        cfg.sft.epochs = 300
    return cfg


def greedy_reply(lm, question: str) -> tuple[str, bool]:
    ids = render([{"role": "user", "content": question}], lm.tokenizer, add_generation_prompt=True).ids
    out = list(
        generate_ids(
            lm.model, ids, SampleConfig(temperature=0.0, max_new_tokens=20), set(stop_ids(lm.tokenizer))
        )
    )
    return lm.tokenizer.decode(out), len(out) < 20


@pytest.fixture(scope="module")
def tuned(trained_run_template, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    data = write_qa(root / "qa.jsonl")
    run = root / "chat"
    sft(run, sft_config(trained_run_template, [data]))
    return run


def test_a_tiny_base_fine_tuned_on_qa_pairs_answers_them_exactly(tuned):
    lm = load(tuned)
    for question, answer in QA:
        assert greedy_reply(lm, question) == (answer, True)  # the reply, then <|end|>
    rows = list(csv.DictReader(open(tuned / "metrics.csv")))
    ends = [float(r["end_rate"]) for r in rows if r["end_rate"]]
    assert ends and ends[-1] == 1.0  # every val prompt's greedy reply ended within the limit
    stats = json.loads((tuned / "sft_data.json").read_text())
    assert stats["train"]["kept"] == len(QA) and stats["train"]["skipped"] == 0


def test_the_sft_run_keeps_its_base_untouched_and_shares_its_tokenizer(tuned, trained_run_template):
    assert (tuned / "tokenizer").is_dir()
    base_best = (trained_run_template / "checkpoints" / "best.safetensors").read_bytes()
    assert load(trained_run_template).tokenizer.hash == load(tuned).tokenizer.hash
    assert (trained_run_template / "checkpoints" / "best.safetensors").read_bytes() == base_best
    cfg = Run.at(tuned).load_config()
    assert cfg.sft.base == str(trained_run_template) and cfg.train.init_from == str(trained_run_template)


def _session_and_data(
    trained_run, tmp_path, micro_batches: int, rows: int = 2, end_weight: float = 1.0
) -> tuple[Session, TrainData]:
    """A session as fit() builds it, with the SFT data of QA, without training."""
    import contextlib

    from scratchlm.finetuning import copy_tokenizer as _copy_tokenizer
    from scratchlm.finetuning import sft_data
    from scratchlm.trainer import _setup

    run = Run.at(tmp_path / "chat")
    cfg = sft_config(trained_run, [write_qa(tmp_path / "qa.jsonl")], steps=1)
    cfg.model = RunConfig.from_dict(Run.at(trained_run).load_config().to_dict()).model
    cfg.train.batch_size, cfg.train.grad_accum = rows, micro_batches
    cfg.sft.end_weight = end_weight
    _copy_tokenizer(Run.at(trained_run), run)
    with contextlib.ExitStack() as held:
        s = _setup(run, cfg, "sft", held)
    s.forward = s.model
    return s, sft_data(s)


def test_the_loss_covers_the_replies_and_their_end_only(trained_run, tmp_path):
    """The targets come from the template's mask: a prompt token's label is never scored (setting it to any
    token changes nothing), and scoring it would change the loss."""
    s, data = _session_and_data(trained_run, tmp_path, 1)
    x, y = data.batches.next_batch()
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    rendered = {tuple(r.ids): r.mask for r in (render(c, s.tokenizer) for c in conversations)}
    row, start = x[0].tolist(), 0
    while start < len(row) and row[start] != s.tokenizer.pad_id:  # each packed conversation of row 0
        ids = next(k for k in rendered if tuple(row[start : start + len(k) - 1]) == k[:-1])
        want = [t if m else -1 for t, m in zip(ids[1:], rendered[ids][1:], strict=True)]
        assert y[0, start : start + len(ids) - 1].tolist() == want
        start += len(ids)
    _, loss = s.model(x, y)
    prompt = (y == -1) & (x != s.tokenizer.pad_id)
    scored_prompt = torch.where(prompt, torch.roll(x, -1, dims=1), y)
    _, with_prompt = s.model(x, scored_prompt)
    assert not torch.equal(loss, with_prompt)


def test_loss_is_normalised_per_supervised_token_over_micro_batches(trained_run, tmp_path):
    """Two micro-batches with different numbers of reply tokens: the step's loss and gradients equal one
    forward over both batches together (a per-token mean), not the mean of the two means."""
    s, data = _session_and_data(trained_run, tmp_path, 2, rows=1)
    reference = copy.deepcopy(s.model)
    state = data.batches.state_dict()
    batches = [data.batches.next_batch() for _ in range(2)]
    counts = [int((y >= 0).sum()) for _, y in batches]
    assert counts[0] != counts[1]
    data.batches.load_state_dict(state)
    loss, trained = _train_step(s, data)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    _, ref_loss = reference(x, y)
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert trained == int((x != s.tokenizer.pad_id).sum())
    for (name, p), q in zip(s.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_end_weight_weighs_each_replys_end_token_in_the_loss(trained_run, tmp_path):
    """--sft.end-weight W: the step's loss is the mean of the reply tokens' cross-entropies with each <|end|>
    target counted W times (over the summed weights); W = 1 is the plain per-token mean."""
    import torch.nn.functional as F

    s, data = _session_and_data(trained_run, tmp_path, 1, rows=2, end_weight=4.0)
    end = s.tokenizer.special_ids["<|end|>"]
    state = data.batches.state_dict()
    x, y = data.batches.next_batch()
    data.batches.load_state_dict(state)
    assert data.target_weights[end] == 4.0 and data.target_weights.sum() == s.cfg.model.vocab_size + 3
    with torch.no_grad():
        logits, plain = s.model(x, y)
    per = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
    kept = y.flatten() >= 0
    w = torch.where(y.flatten() == end, 4.0, 1.0)[kept]
    want = (per[kept] * w).sum() / w.sum()
    assert (y == end).sum() >= 2 and not torch.isclose(want, plain)
    loss, _ = _train_step(s, data)
    assert loss == pytest.approx(want.item(), rel=1e-5)
    (tmp_path / "plain").mkdir()
    s1, data1 = _session_and_data(trained_run, tmp_path / "plain", 1, rows=2)
    assert data1.target_weights is None and _train_step(s1, data1)[0] == pytest.approx(plain.item(), rel=1e-5)


def test_the_best_sft_checkpoint_is_the_one_whose_replies_end_most_then_lowest_loss(trained_run, tmp_path):
    """What eval, chat and serve load ("best"): more replies that end beats a lower val loss, which a small
    model's rising val loss would otherwise pick over the checkpoints that learnt to stop."""
    from scratchlm.finetuning import most_replies_that_end as score

    assert score(6.9, {"end_rate": 1.0}) < score(5.5, {"end_rate": 0.5}) < score(5.4, {"end_rate": 0.375})
    assert score(5.4, {"end_rate": 0.5}) < score(5.5, {"end_rate": 0.5})
    _, data = _session_and_data(trained_run, tmp_path, 1)
    assert data.selection is score


def test_a_time_budget_without_epochs_trains_for_the_budget(trained_run_template, tmp_path):
    """`sft --train.max-minutes 4` trains for the minutes (3 epochs of the seed tasks would end it after
    seconds); epochs given with it still set the steps."""
    run, base = tmp_path / "chat", str(trained_run_template)
    cfg = sft(run, base=base, train={"max_minutes": 4}, print_config=True)
    assert cfg.sft.epochs == 0 and cfg.train.max_minutes == 4
    assert sft(run, base=base, train={"max_minutes": 4}, sft={"epochs": 5}, print_config=True).sft.epochs == 5
    assert sft(run, base=base, print_config=True).sft.epochs == 3


def test_the_default_lr_follows_the_bases_width_unless_given(trained_run_template, tmp_path):
    """3e-3 for a base up to 128 wide (what made a 4x128 base's replies end), 1/width beyond; an LR given
    (flag, keyword or recipe) is kept."""
    from scratchlm.config import sft_lr

    assert sft_lr(64) == sft_lr(128) == 3e-3 and sft_lr(768) == pytest.approx(5e-4)
    run, base = tmp_path / "chat", str(trained_run_template)
    width = Run.at(trained_run_template).load_config().model.n_embd
    assert sft(run, base=base, print_config=True).train.lr == pytest.approx(sft_lr(width))
    assert sft(run, base=base, train={"lr": 1e-4}, print_config=True).train.lr == 1e-4
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 2.0e-4\n")
    assert sft(run, base=base, recipe=str(recipe), print_config=True).train.lr == 2e-4


def test_an_interrupted_sft_run_resumes_exactly(trained_run_template, tmp_path, monkeypatch):
    import scratchlm.trainer as trainer

    data = write_qa(tmp_path / "qa.jsonl")
    whole, split = tmp_path / "whole", tmp_path / "split"

    def config():
        cfg = sft_config(trained_run_template, [data], steps=24)
        cfg.train.eval_interval = 8  # checkpoints at 8, 16, 24; the loader wraps past many epochs
        return cfg

    sft(whole, config())
    real_step, calls = trainer._train_step, []

    def crash_in_step_19(s, data):
        calls.append(1)
        if len(calls) == 19:
            raise KeyboardInterrupt  # as a kill would: nothing saved after the checkpoint of step 16
        return real_step(s, data)

    monkeypatch.setattr(trainer, "_train_step", crash_in_step_19)
    with pytest.raises(KeyboardInterrupt):
        sft(split, config())
    monkeypatch.setattr(trainer, "_train_step", real_step)
    assert [d.name for d in step_dirs(Run.at(split))][-1] == "step_000016"
    sft(split, config())
    a = load(whole, checkpoint="last").model.state_dict()
    b = load(split, checkpoint="last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_malformed_jsonl_is_one_line_naming_file_and_line(trained_run_template, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n'
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"\n',
        encoding="utf-8",
    )
    code = main(["sft", str(tmp_path / "chat"), "--from", str(trained_run_template), "--input", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "chat" / "config.yaml").exists()


def test_sft_mistakes_are_one_line(trained_run_template, trained_run, tmp_path, capsys):
    qa = str(write_qa(tmp_path / "qa.jsonl"))
    cases = [
        (["sft", str(tmp_path / "c1"), "--input", qa], "--from BASE_RUN"),
        (["sft", str(trained_run), "--from", str(trained_run_template), "--input", qa], "a pretraining run"),
        (
            ["sft", str(tmp_path / "c2"), "--from", str(tmp_path / "nothing"), "--input", qa],
            "not a scratchlm run",
        ),
        (
            ["sft", str(tmp_path / "c3"), "--from", str(trained_run_template), "--sft.epochs", "-1"],
            "--sft.epochs -1",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_cli_applies_sft_defaults_and_the_bundled_set(trained_run_template, tmp_path, capsys):
    run = tmp_path / "chat"
    assert main(["sft", str(run), "--from", str(trained_run_template), "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert f"lr: {SFT_TRAIN_DEFAULTS['lr']}" in printed and f"base: {trained_run_template}" in printed
    argv = [
        "sft",
        str(run),
        "--from",
        str(trained_run_template),
        "--train.max-steps",
        "3",
        "--sft.epochs",
        "0",
        "--train.eval-interval",
        "3",
        "--train.eval-batches",
        "1",
        "--sft.check-prompts",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validation: 18 of the 175 conversations held out" in out  # 10%, and the log says so
    stats = json.loads((run / "sft_data.json").read_text())
    assert stats["train"]["conversations"] + stats["val"]["conversations"] == 175
    assert [d.name for d in step_dirs(Run.at(run))] == ["step_000003"]


def test_eval_of_an_sft_run_scores_its_held_out_replies(tuned, capsys):
    assert main(["eval", str(tuned)]) == 0
    out = capsys.readouterr().out
    assert "on sft val" in out and "replies of 4 held-out conversations" in out
    # Every validation conversation is replied to, greedily, within --reply-tokens (128), and counted.
    held = f"the 4 conversations of --val-input {tuned.parent / 'qa.jsonl'}"
    line = f"replies that end: 4/4 (100%), none empty (greedy, within 128 new tokens, replying to {held})"
    assert line in out
    result = json.loads((tuned / "eval.json").read_text())
    assert result["end_rate"] == 1.0 and result["loss"] < 1.0
    assert result["replies"] == {
        "ended": 4,
        "empty": 0,
        "prompts": 4,
        "max_new_tokens": 128,
        "held_out": held,
        "summary": "4/4 (100%), none empty",
    }
    report = (tuned / "report.md").read_text()
    assert "| replies that end with <\\|end\\|> | 4/4 (100%), none empty" in report
    assert "User: What is the capital of France?" in report


def test_an_empty_reply_does_not_count_as_one_that_ends(monkeypatch):
    """end_rate counts replies that end with something said: an empty one (<|end|> at once) is a failure,
    as is one still going at the token limit."""
    import scratchlm.lm as lm_module
    from scratchlm.lm import ChatReply, EndCount, count_replies_that_end

    replies = iter(
        [ChatReply("Paris.", "stop", 5), ChatReply("", "stop", 5), ChatReply(" \n", "stop", 5)]
        + [ChatReply("1 2 3", "length", 5)]
    )
    monkeypatch.setattr(lm_module, "greedy_reply", lambda *a: next(replies))
    count = count_replies_that_end(None, None, [[{"role": "user", "content": "q"}]] * 4, 128)
    assert count == EndCount(ended=1, empty=2, total=4) and count.rate == 0.25
    assert str(count) == "1/4 (25%), 2 empty (counted as not ending)"
    assert str(EndCount(29, 0, 32)) == "29/32 (91%), none empty"


def test_the_hf_export_chats_like_scratchlm_and_stops_at_end(tuned, tmp_path):
    """transformers' apply_chat_template gives the renderer's ids, and generate stops at <|end|> with the
    reply scratchlm gives (greedy): the chat works in the tools users run, without remote code."""
    transformers = pytest.importorskip("transformers")
    from scratchlm.formats import write_export as export

    folder = export(tuned, "hf", tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    lm = load(tuned)
    for question, answer in QA:
        messages = [{"role": "user", "content": question}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(ids) == render(messages, lm.tokenizer, add_generation_prompt=True).ids
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
        new = out[0, len(ids) :].tolist()
        assert new[-1] in stop_ids(lm.tokenizer) and len(new) < 20  # stopped at <|end|>, not at the limit
        assert tok.decode(new[:-1]) == answer == greedy_reply(lm, question)[0]


@pytest.mark.slow
def test_two_processes_match_one_with_uneven_reply_tokens_per_rank(trained_run_template, tmp_path):
    """The step's loss is a mean per reply token over all ranks: two processes with different reply-token
    counts in their halves of the batch train exactly as one process with the whole batch."""
    import os
    import subprocess

    from .test_train import losses, scratchlm_cmd

    qa = str(write_qa(tmp_path / "qa.jsonl"))
    common = ["--from", str(trained_run_template), "--input", qa, "--val-input", qa, "--sft.epochs", "0"]
    common += ["--train.max-steps", "6", "--train.eval-interval", "3", "--train.log-interval", "1"]
    common += ["--sft.check-prompts", "0"]
    one = subprocess.run(
        scratchlm_cmd("sft", str(tmp_path / "one"), "--train.batch-size", "2", *common),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        scratchlm_cmd("sft", str(tmp_path / "two"), "--train.batch-size", "1", *common, nproc=2),
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert two.returncode == 0, two.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 6
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
