"""`scratchlm chat RUN`: talk to the run's model in the terminal, replies streamed.

Replies stream to stdout as they are generated; everything else (notices, command answers, errors) goes
to stderr, so piped use is scriptable: each input line is one user turn
(`printf 'Hi\\nWho?\\n' | scratchlm chat RUN --temperature 0`). Each reply is one block that ends with a
newline and is followed by one blank line, so replies of several lines stay apart in the output
(`reply 1\\n\\nreply 2\\n\\n`). At a terminal there is a prompt, line editing and a banner instead; the
replies are the same.

- The conversation is kept whole while it fits the model's context; then its oldest exchanges are
  dropped, with a notice (decode.fit, the same rule as LoadedModel.chat). The system
  prompt always stays.
- Ctrl-C during a reply stops it; the partial reply stays in the conversation, as it was shown. Ctrl-C
  at the prompt is ignored; Ctrl-D (end of input) quits with exit status 0.
- A base model (not made by `scratchlm sft`) never saw the chat format: each line is then continued as
  plain text, like `scratchlm sample`, with no history.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import UserError, atomic_write_text
from ..config import SampleConfig
from ..run import Run
from ..settings import resolve

if TYPE_CHECKING:
    from ..lm import LoadedModel

HELP = """commands:
  /system TEXT   set the system prompt (/system alone removes it); the conversation stays
  /reset         start the conversation over (the system prompt stays)
  /temp X        sampling temperature from now on (0: greedy)
  /save FILE     write the conversation as JSON messages (role, content) to a new file; an existing
                 file is kept (say /save! FILE to replace it); the folder must exist, and a run
                 directory's own files are never written
  /help          this list
A line starting with // is sent as a message starting with /. Ctrl-C stops a reply; Ctrl-D quits."""


class Chat:
    """One terminal conversation: the settings, the system prompt and the user/assistant turns so far."""

    def __init__(
        self, lm: LoadedModel, cfg: SampleConfig, system: str | None, out, err, interactive: bool = False
    ):
        self.lm, self.cfg, self.out, self.err, self.interactive = lm, cfg, out, err, interactive
        self.system = system or None
        self.turns: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def note(self, text: str) -> None:
        print(f"scratchlm: {text}", file=self.err, flush=True)

    def handle(self, line: str) -> None:
        """One input line: a command, or a user turn and its streamed reply."""
        if line.startswith("/") and not line.startswith("//"):
            name, _, arg = line[1:].partition(" ")
            self.command(name, arg)
        elif line.strip():
            self.reply(line[1:] if line.startswith("//") else line)

    def command(self, name: str, arg: str) -> None:
        arg = arg.strip()
        if name == "help":
            print(HELP, file=self.err, flush=True)
        elif name == "reset":
            self.turns = []
            self.note("the conversation starts over" + (" (the system prompt stays)" if self.system else ""))
        elif name == "system" and not self.lm.is_chat:
            self.note("a base model has no system prompt: each line is continued as plain text")
        elif name == "system":
            self.system = arg or None
            self.note("system prompt set" if arg else "system prompt removed")
        elif name == "temp":
            try:
                self.cfg = dataclasses.replace(self.cfg, temperature=float(arg))
            except (ValueError, UserError):  # not a number, or a negative one (SettingError)
                self.note(f"/temp {arg}: give a number >= 0 (0 is greedy)")
                return
            self.note(f"temperature {self.cfg.temperature:g}")
        elif name in ("save", "save!"):
            self.save(arg, replace=name == "save!")
        else:
            self.note(f"unknown command /{name}; /help lists the commands")

    def save(self, path: str, replace: bool = False) -> None:
        """Write the conversation to a new file (`replace`: or over an existing one), atomically. A run
        directory's files are refused: a conversation written over RUN/config.yaml broke `train`."""
        if not path:
            self.note("/save FILE: name the file to write")
            return
        target = Path(path).expanduser().absolute()
        refusal = _save_refusal(target, replace)
        if refusal:
            self.note(f"/save {path}: {refusal}")
            return
        messages = self.messages()
        try:
            atomic_write_text(target, json.dumps(messages, ensure_ascii=False, indent=2) + "\n")
        except OSError as e:
            self.note(f"error: {path}: {e.strerror or e}")
            return
        self.note(f"saved {len(messages)} messages to {target}")

    def reply(self, text: str) -> None:
        """Stream the reply to one user turn and keep both in the conversation (a stopped reply too)."""
        user = {"role": "user", "content": text}
        from ..decode import stream_text
        from ..lm import ReplyStream

        if self.lm.is_chat:
            try:
                stream = ReplyStream(self.lm, [*self.messages(), user], self.cfg)
            except UserError as e:  # the message alone does not fit the context: it is not kept
                self.note(f"error: {e}")
                return
            if stream.reply.dropped:
                self.note(
                    f"left out the oldest {stream.reply.dropped} messages to stay within the model's "
                    f"context of {self.lm.model.config.block_size} tokens"
                )
            earlier = stream.messages[1 if self.system else 0 : -1]
            pieces = iter(stream)
        else:  # each line on its own; the turns are kept for /save only
            earlier = self.turns
            pieces = stream_text(self.lm, text, self.cfg, warn=self.err)
        shown: list[str] = []
        stopped = False
        try:
            for piece in pieces:
                shown.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stopped = True
        # One assignment, so a Ctrl-C landing here leaves either the old conversation or the new one.
        self.turns = [*earlier, user, {"role": "assistant", "content": "".join(shown)}]
        # Piped: a blank line after each reply, so a reader can tell where a reply of several lines ends.
        self.out.write("\n" if self.interactive else "\n\n")
        self.out.flush()
        if stopped:
            self.note("reply stopped (Ctrl-C); it stays in the conversation as shown")


def _save_refusal(target: Path, replace: bool) -> str | None:
    """Why /save must not write `target` (an absolute path), or None."""
    inside = next((p for p in target.parents if Run.at(p).is_run()), None)
    if inside is not None or Run.at(target).is_run():
        run = inside or target
        return f"{target} is inside the run directory {run}; save the conversation somewhere else"
    if not target.parent.is_dir():
        return f"the folder {target.parent} does not exist; create it first or pick another path"
    if target.is_dir():
        return f"{target} is a folder; name a file"
    if target.exists() and not replace:
        return f"{target} already exists and was kept; /save! {target} replaces it"
    return None


def _read_line(stdin, interactive: bool) -> str | None:
    """The next input line without its line break; None at the end of input."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            print()
            return None
    line = stdin.readline()
    return line.rstrip("\r\n") if line else None


def talk(
    run_dir: str | Path,
    cfg: SampleConfig | None = None,
    checkpoint: str = "best",
    system: str | None = None,
    stdin=None,
    out=None,
    err=None,
) -> None:
    """Chat with the run's model until the end of input (Ctrl-D). `system` defaults to the system
    prompt the run was fine-tuned with, if any."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    from ..lm import load

    lm = load(run_dir, checkpoint)
    cfg = cfg or lm.config.sample
    interactive = stdin is sys.stdin and stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input(); absent on Windows)
        except ImportError:
            pass
    if system is None and lm.is_chat:
        system = lm.config.sft.system_prompt
    session = Chat(lm, cfg, system, out, err, interactive)
    if not lm.is_chat:
        session.note(
            f"{run_dir} is a base model, not instruction-tuned: completion mode, each line is continued as "
            f"plain text (`scratchlm sft NEW_RUN --from {run_dir}` makes a chat model of it)"
        )
    if interactive:
        print(
            f"chatting with {run_dir} (step {lm.step}, context {lm.model.config.block_size} tokens); "
            "/help lists the commands, Ctrl-D quits",
            file=err,
        )
    while True:
        try:
            line = _read_line(stdin, interactive)
            if line is None:
                return
            session.handle(line)
        except KeyboardInterrupt:  # at the prompt, or between a reply and the prompt: carry on
            print(file=err)


def chat(
    run: str | Path,
    *,
    checkpoint: str = "best",
    system: str | None = None,
    origin: str = "scratchlm.chat()",
    **settings: Any,
) -> None:
    """Chat with the run's model in the terminal, replies streamed; a base model (not made by `scratchlm
    sft`) continues each line as text instead. Piped input: one user turn per line.

    Args:
        run: a trained run directory
        checkpoint: best, last, or a path to a .safetensors file
        system: system prompt (default: the one the run was tuned with)
    """
    cfg = resolve(run, "chat", overrides={"sample": settings}, origin=origin).sample
    talk(run, cfg, checkpoint=checkpoint, system=system)
