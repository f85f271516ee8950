"""`scratchlm serve RUN`: an OpenAI-compatible HTTP API (/v1/...) and a chat page (/) for the run's model."""

from __future__ import annotations

from pathlib import Path

from ..common import UserError


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    checkpoint: str = "best",
) -> None:
    """An OpenAI-compatible HTTP API (/v1/...) and a chat page (/) for a run's model, until Ctrl-C.

    Args:
        run: a trained run directory
        host: address to bind (0.0.0.0 exposes it to the network)
        port: TCP port
        api_key: require Authorization: Bearer KEY on /v1/ requests
        max_batch: sequences decoded together
        checkpoint: best, last, or a path to a .safetensors file
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

    lm = load(run, checkpoint, device=pick_device("auto", "--device"))
    app = create_app(lm, Path(run).resolve().name, api_key=api_key, max_batch=max_batch)
    print(f"scratchlm: serving {run} on http://{host}:{port}/ (chat page) and http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")
