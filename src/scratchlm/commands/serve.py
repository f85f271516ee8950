"""`scratchlm serve RUN`: an OpenAI-compatible HTTP API (/v1/...) and a chat page (/) for the run's model."""

from __future__ import annotations

import dataclasses
import errno
import socket
from pathlib import Path
from typing import Any

from ..common import UserError
from ..settings import resolve


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    checkpoint: str = "best",
    origin: str = "scratchlm.serve()",
    **settings: Any,
) -> None:
    """An OpenAI-compatible HTTP API (/v1/...) and a chat page (/) for a run's model, until Ctrl-C.

    Args:
        run: a trained run directory
        host: address to bind (0.0.0.0 exposes it to the network)
        port: TCP port
        api_key: require Authorization: Bearer KEY on /v1/ requests
        max_batch: sequences decoded together
        checkpoint: best, last, or a path to a .safetensors file

    The sampling settings a request leaves out are the run's (RUN/config.yaml's sample section, as `sample`
    and `chat` use them), changed by the keyword settings (the flags: --temperature, --top-k, ...).
    --compile true compiles the batched decode step first: more tokens/s for one stream and for many.
    """
    if max_batch < 1:
        raise UserError(f"--max_batch {max_batch}: must be an integer >= 1")
    if not 0 <= port < 65536:
        raise UserError(f"--port {port}: must be between 0 and 65535")
    try:
        import uvicorn

        from ..server.app import create_app
    except ImportError as e:
        raise UserError(
            f"serve needs its extra ({e.name} is missing): pip install 'scratchlm[serve]'"
        ) from None
    from ..checkpoint import load
    from ..common import pick_device

    sample = resolve(run, "serve", overrides={"sample": settings}, origin=origin).sample
    lm = load(run, checkpoint, device=pick_device("auto", "--device"))
    lm.config = dataclasses.replace(lm.config, sample=sample)  # requests default to these, as sample/chat
    sock = _bound(host, port)  # before announcing: a busy port is one line, and --port 0 names the real one
    port = sock.getsockname()[1]
    if sample.compile:  # --compile true: the engine's batched step, compiled before the first request
        wait = "~10-60 s" if lm.model.num_params() < 20_000_000 else "minutes: ~5 for GPT-2 124M on 2 cores"
        print(f"scratchlm: compiling the decode step for batches of up to {max_batch} (once; {wait})…")
    name = Path(run).resolve().name
    app = create_app(lm, name, api_key=api_key, max_batch=max_batch, compile=sample.compile)
    print(f"scratchlm: serving {run} on http://{host}:{port}/ (chat page) and http://{host}:{port}/v1")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


def _bound(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port), or one line saying why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        what = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
        raise UserError(
            f"--port {port}: {host}:{port} {what}; stop what holds it or pick another --port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
