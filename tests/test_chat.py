"""Chat: fitting a conversation into the context, LoadedModel.chat, the terminal chat (`scratchlm chat`)."""

from __future__ import annotations

import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import scratchlm
from scratchlm.chat_template import fit_prompt, render, stop_ids
from scratchlm.checkpoint import save_best, weights_of
from scratchlm.commands.chat import talk as chat
from scratchlm.common import UserError
from scratchlm.config import SampleConfig
from scratchlm.decode import generate_ids
from scratchlm.run import Run

from .conftest import ctrl_c_reaches_it

pytestmark = pytest.mark.usefixtures("one_thread")

# What the chat model learns: answers it memorizes, each closed by <|end|>, as `scratchlm sft` teaches.
QA = [
    ("Who is Natasha?", "Natasha Rostova, the youngest daughter of the Rostovs."),
    ("Who is Pierre?", "Pierre Bezukhov, the son of a rich count."),
    ("Who is Prince Andrew?", "Prince Andrew Bolkonski, an officer."),
    ("Where do they meet?", "At Anna Pavlovna's party in Petersburg."),
    ("When does it begin?", "In July 1805."),
    ("Who is Napoleon?", "The emperor of the French."),
]
HI = [{"role": "user", "content": QA[0][0]}]
# Subprocesses on one thread, as the tests are: the same float sums, so the same greedy tokens.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _teach_chat(model, tok, steps: int = 150) -> None:
    """A few seconds of fine-tuning on QA in the chat format (loss on the replies and their <|end|>)."""
    rows = []
    for q, a in QA:
        r = render([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tok)
        rows.append((r.ids[:-1], [t if m else -1 for t, m in zip(r.ids[1:], r.mask[1:], strict=True)]))
    width = max(len(ids) for ids, _ in rows)
    idx = torch.tensor([ids + [tok.pad_id] * (width - len(ids)) for ids, _ in rows])  # (6, width)
    targets = torch.tensor([t + [-1] * (width - len(t)) for _, t in rows])  # (6, width)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _make_chat_run(src: Path, dst: Path, teach: bool) -> Path:
    """A copy of the tiny trained run marked as made by `scratchlm sft` (config.sft.base set); with
    `teach`, fine-tuned on QA first, so it ends its replies with <|end|>."""
    shutil.copytree(src, dst)
    lm = scratchlm.load(dst)
    lm.config.sft.base = str(src)
    if teach:  # on one thread: a module fixture is set up before the one_thread fixture of the tests
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _teach_chat(lm.model, lm.tokenizer)
        finally:
            torch.set_num_threads(threads)
    weights = weights_of(lm.model.state_dict(), lm.config.model.tie_embeddings)
    save_best(Run.at(dst), lm.step, weights, lm.config, lm.tokenizer.hash, val_loss=0.0)
    return dst


@pytest.fixture(scope="module")
def chat_run(trained_run_template, tmp_path_factory) -> Path:
    """A chat model that answers the questions of QA and ends its turn."""
    return _make_chat_run(trained_run_template, tmp_path_factory.mktemp("chat") / "run", teach=True)


@pytest.fixture(scope="module")
def talkative_run(trained_run_template, tmp_path_factory) -> Path:
    """A chat model that practically never ends a reply: <|end|> was never trained, <|eos|> ends a book."""
    return _make_chat_run(trained_run_template, tmp_path_factory.mktemp("chat") / "talkative", teach=False)


def _tokenizer(run: Path):
    return scratchlm.load(run).tokenizer


# ---------------------------------------------------------------- fitting the conversation
def test_fit_prompt_drops_the_oldest_exchanges_and_keeps_the_system_prompt(trained_run_template):
    tok = _tokenizer(trained_run_template)
    system = {"role": "system", "content": "You answer in one sentence."}
    turns = []
    for i in range(4):
        turns += [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    messages = [system, *turns, {"role": "user", "content": "And now?"}]
    size = lambda ms: len(render(ms, tok, add_generation_prompt=True).ids)  # noqa: E731

    assert fit_prompt(messages, tok, size(messages)) == (messages, 0)
    kept, dropped = fit_prompt(messages, tok, size(messages) - 1)
    assert kept == [system, *turns[2:], messages[-1]] and dropped == 2  # one whole exchange goes
    budget = size([system, *turns[4:], messages[-1]])  # room for the last two exchanges and the question
    kept, dropped = fit_prompt(messages, tok, budget)
    assert kept == [system, *turns[4:], messages[-1]] and dropped == 4
    assert size(kept) <= budget < size([system, *turns[2:], messages[-1]])
    kept, dropped = fit_prompt(messages, tok, size([system, messages[-1]]))
    assert kept == [system, messages[-1]] and dropped == 8
    with pytest.raises(UserError, match="the system prompt and the last message take"):
        fit_prompt(messages, tok, size([system, messages[-1]]) - 1)
    kept, dropped = fit_prompt(messages[1:], tok, size(messages[-3:]))  # no system prompt
    assert kept == messages[-3:] and dropped == 6


def test_terminal_chat_drops_the_oldest_turns_with_a_notice(talkative_run, tmp_path):
    questions = [f"Tell me about the war, part {i}." for i in range(4)]
    lines = ["/system Be brief.", *questions, f"/save {tmp_path / 'saved.json'}"]
    out, err = io.StringIO(), io.StringIO()
    cfg = SampleConfig(temperature=0.0, max_new_tokens=12)
    chat(talkative_run, cfg, stdin=io.StringIO("\n".join(lines)), out=out, err=err)
    assert re.search(
        r"left out the oldest \d+ messages to stay within the model's context of 64 tokens", err.getvalue()
    )
    saved = json.loads((tmp_path / "saved.json").read_text(encoding="utf-8"))
    assert saved[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in saved[1:]] == ["user", "assistant"] * (len(saved[1:]) // 2)
    assert saved[-2]["content"] == "Tell me about the war, part 3." and len(saved) < 1 + 2 * 4
    assert len(out.getvalue().splitlines()) >= 4


# ---------------------------------------------------------------- LoadedModel.chat
def test_chat_finishes_with_stop_at_end_of_turn_and_length_at_the_limit(chat_run):
    lm = scratchlm.load(chat_run)
    assert lm.is_chat
    stopped = lm.chat(HI, max_new_tokens=60, temperature=0.0)
    assert stopped.finish_reason == "stop", "the fine-tuned model should end its answer with <|end|>"
    k = stopped.completion_tokens - 1  # the reply's tokens, then <|end|>
    assert 0 < k < 60
    cut = lm.chat(HI, max_new_tokens=k, temperature=0.0)  # the limit comes just before <|end|>
    assert cut.finish_reason == "length" and cut.completion_tokens == k
    assert cut.text == stopped.text and stopped.text.strip()
    prompt = render(HI, lm.tokenizer, add_generation_prompt=True).ids
    assert stopped.prompt_tokens == len(prompt) == stopped.usage["prompt_tokens"]
    assert stopped.usage["total_tokens"] == len(prompt) + k + 1 and stopped.dropped == 0


def test_greedy_chat_is_generate_ids_on_the_rendered_prompt(chat_run):
    lm = scratchlm.load(chat_run)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Who is Prince Andrew?"},
        {"role": "assistant", "content": "A prince."},
        {"role": "user", "content": "And Natasha?"},
    ]
    r = lm.chat(messages, max_new_tokens=20, temperature=0.0)
    prompt = render(messages, lm.tokenizer, add_generation_prompt=True).ids
    cfg = SampleConfig(temperature=0.0, max_new_tokens=20)
    ids = list(generate_ids(lm.model, prompt, cfg, set(stop_ids(lm.tokenizer))))
    assert r.text == lm.tokenizer.decode(ids) and r.prompt_tokens == len(prompt)
    assert r.finish_reason == ("length" if len(ids) == 20 else "stop")
    pieces = list(lm.chat_stream(messages, max_new_tokens=20, temperature=0.0))
    assert "".join(pieces) == r.text and len(pieces) > 1


def test_chat_takes_every_sampling_knob_and_names_an_unknown_one(chat_run):
    lm = scratchlm.load(chat_run)
    knobs = dict(
        temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, repetition_penalty=1.1, seed=3, stop=["\n"]
    )
    a = lm.chat(HI, max_new_tokens=8, **knobs)
    assert a == lm.chat(HI, max_new_tokens=8, **knobs)  # seeded: the same reply again
    assert "\n" not in a.text
    with pytest.raises(TypeError, match="unknown sampling setting 'temprature'"):
        lm.chat(HI, temprature=0.5)
    with pytest.raises(UserError, match="a prompt .* ends with a user message"):
        lm.chat([*HI, {"role": "assistant", "content": "Hello."}])


# ---------------------------------------------------------------- the terminal chat
def _scratchlm(*args: str, stdin: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=300,
    )


def test_piped_chat_prints_each_reply_as_a_block_and_keeps_the_conversation(chat_run):
    run = chat_run
    (q1, _), (q2, _) = QA[4:6]
    out = _scratchlm("chat", str(run), "--temperature", "0", "--max-new-tokens", "16", stdin=f"{q1}\n{q2}\n")
    assert out.returncode == 0, out.stderr
    lm = scratchlm.load(run)
    first = lm.chat([{"role": "user", "content": q1}], temperature=0.0, max_new_tokens=16)
    conversation = [{"role": "user", "content": q1}, {"role": "assistant", "content": first.text}]
    second = lm.chat([*conversation, {"role": "user", "content": q2}], temperature=0.0, max_new_tokens=16)
    assert first.finish_reason == "stop" and second.dropped == 0 and "\n" not in first.text + second.text
    assert out.stdout == f"{first.text}\n\n{second.text}\n\n"  # each reply, then a blank line
    assert out.stderr == ""  # no banner, no prompt, no notice in piped use of a chat model


def test_chat_commands_on_piped_input(chat_run, tmp_path, monkeypatch):
    run = chat_run
    lm = scratchlm.load(run)
    system = {"role": "system", "content": "Be kind."}
    lines = [
        "/system Be kind.",
        HI[0]["content"],
        "/save first.json",
        "/reset",
        "/temp 0",
        "/system",
        HI[0]["content"],
        "/save second.json",
        "/temp -1",
        "/bogus",
        "/help",
        "//x",
        "/save",
    ]
    out, err = io.StringIO(), io.StringIO()
    cfg = SampleConfig(temperature=0.8, max_new_tokens=24)
    monkeypatch.chdir(tmp_path)
    chat(run, cfg, stdin=io.StringIO("\n".join(lines) + "\n"), out=out, err=err)
    with_system = lm.chat([system, *HI], temperature=0.8, max_new_tokens=24).text
    plain = lm.chat(HI, temperature=0.0, max_new_tokens=24).text
    slash = lm.chat(
        [*HI, {"role": "assistant", "content": plain}, {"role": "user", "content": "/x"}],
        temperature=0.0,
        max_new_tokens=24,
    ).text
    assert out.getvalue() == f"{with_system}\n\n{plain}\n\n{slash}\n\n"
    first = json.loads((tmp_path / "first.json").read_text(encoding="utf-8"))
    assert first == [system, *HI, {"role": "assistant", "content": with_system}]
    second = json.loads((tmp_path / "second.json").read_text(encoding="utf-8"))
    assert second == [*HI, {"role": "assistant", "content": plain}]  # /reset forgot, /system removed
    notes = err.getvalue()
    for expected in (
        "scratchlm: system prompt set",
        f"saved 3 messages to {tmp_path / 'first.json'}\n",  # where it wrote: the absolute path
        "the conversation starts over (the system prompt stays)",
        "temperature 0\n",
        "system prompt removed",
        "/temp -1: give a number >= 0",
        "unknown command /bogus; /help lists the commands",
        "/save FILE     write the conversation",
        "/save FILE: name the file to write",
    ):
        assert expected in notes
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))  # atomic: no leftovers


def test_save_keeps_files_runs_and_missing_folders_alone(chat_run, tmp_path, monkeypatch):
    """/save never replaces a file unless told (/save!), never writes into a run directory, never makes a
    folder; it says where it wrote."""
    run = tmp_path / "run"  # a run of our own: /save is pointed at its config.yaml
    shutil.copytree(chat_run, run)
    config = (run / "config.yaml").read_text(encoding="utf-8")
    (tmp_path / "kept.json").write_text("mine", encoding="utf-8")
    lines = [
        f"/save {run / 'config.yaml'}",
        f"/save! {run / 'config.yaml'}",
        f"/save {run / 'notes.json'}",
        f"/save {run / 'checkpoints' / 'x.json'}",
        "/save kept.json",
        "/save missing/new.json",
        "/save new.json",
        "/save! kept.json",
    ]
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.chdir(tmp_path)
    chat(run, SampleConfig(max_new_tokens=4), stdin=io.StringIO("\n".join(lines) + "\n"), out=out, err=err)
    notes = err.getvalue().splitlines()
    assert (run / "config.yaml").read_text(encoding="utf-8") == config
    assert not (run / "notes.json").exists() and not (run / "checkpoints" / "x.json").exists()
    assert all(f"inside the run directory {run}" in n for n in notes[:4]), notes
    assert f"{tmp_path / 'kept.json'} already exists and was kept; /save! " in notes[4]
    assert f"the folder {tmp_path / 'missing'} does not exist" in notes[5]
    assert not (tmp_path / "missing").exists()
    assert notes[6] == f"scratchlm: saved 0 messages to {tmp_path / 'new.json'}"
    assert notes[7] == f"scratchlm: saved 0 messages to {tmp_path / 'kept.json'}"
    assert json.loads((tmp_path / "kept.json").read_text(encoding="utf-8")) == []
    assert len(notes) == 8 and out.getvalue() == ""


def test_lm_chat_on_a_base_model_warns_once_how_to_make_a_chat_model(trained_run_template, chat_run):
    base = scratchlm.load(trained_run_template)
    with pytest.warns(UserWarning, match=r"not made by `scratchlm sft`.*scratchlm sft NEW --from RUN") as w:
        base.chat(HI, max_new_tokens=2)
        base.chat(HI, max_new_tokens=2)
        list(base.chat_stream(HI, max_new_tokens=2))
    assert len([x for x in w if "scratchlm sft" in str(x.message)]) == 1
    assert w[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scratchlm.load(chat_run).chat(HI, max_new_tokens=2)  # a chat model: no warning


def test_a_base_model_chats_in_completion_mode(trained_run):
    out, err = io.StringIO(), io.StringIO()
    chat(
        trained_run,
        SampleConfig(temperature=0.0, max_new_tokens=10),
        stdin=io.StringIO("The war\n/system x\n"),
        out=out,
        err=err,
    )
    lm = scratchlm.load(trained_run)
    assert not lm.is_chat
    assert out.getvalue() == lm.generate("The war", temperature=0.0, max_new_tokens=10) + "\n\n"
    notes = err.getvalue().splitlines()
    assert notes[0] == (
        f"scratchlm: {trained_run} is a base model, not instruction-tuned: completion mode, each line is "
        f"continued as plain text (`scratchlm sft NEW_RUN --from {trained_run}` makes a chat model of it)"
    )
    assert "a base model has no system prompt" in notes[1]


def test_chat_help_and_a_bad_flag():
    out = _scratchlm("chat", "--help", stdin="")
    assert out.returncode == 0 and "scratchlm chat" in out.stdout and "--system" in out.stdout
    out = _scratchlm("chat", "nowhere", "--temperature", "-1", stdin="")
    assert out.returncode == 2 and out.stderr.startswith("scratchlm: error: --temperature -1")


def _read_some(pipe, deadline: float) -> bytes:
    """Wait for output on one of the child's pipes and return what is there."""
    ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, "the chat printed nothing before the deadline"
    return os.read(pipe.fileno(), 1 << 16)


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(talkative_run, tmp_path):
    argv = ["chat", str(talkative_run), "--max-new-tokens", "100000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchlm", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=ENV,
        preexec_fn=ctrl_c_reaches_it,
    )
    deadline, notes = time.monotonic() + 240, b""
    try:
        for n, line in enumerate((b"Tell me a story.\n", b"Another one.\n"), 1):
            proc.stdin.write(line)
            proc.stdin.flush()
            assert _read_some(proc.stdout, deadline)  # the reply streams: it would go on for 100000 tokens
            proc.send_signal(signal.SIGINT)
            # The reply has stopped once the notice is out; its last newline went to stdout before it.
            while notes.count(b"reply stopped") < n and proc.poll() is None:
                notes += _read_some(proc.stderr, deadline)
            while select.select([proc.stdout], [], [], 0)[0] and _read_some(proc.stdout, deadline):
                pass
        # Then the end of input (Ctrl-D): communicate closes stdin.
        out, err = proc.communicate(b"/save talk.json\n", timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
    notes = (notes + err).decode()
    assert proc.returncode == 0, notes
    assert notes.count("reply stopped (Ctrl-C); it stays in the conversation as shown") == 2
    assert "Traceback" not in notes
    talk = json.loads((tmp_path / "talk.json").read_text(encoding="utf-8"))
    assert [m["role"] for m in talk] == ["user", "assistant", "user", "assistant"]
    assert [talk[0]["content"], talk[2]["content"]] == ["Tell me a story.", "Another one."]
    assert all(m["content"] for m in talk)  # each reply was cut after some text
