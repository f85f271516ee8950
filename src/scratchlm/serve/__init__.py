"""`scratchlm serve`: the OpenAI-compatible API and chat page (app.py); FastAPI loads only when serving."""

from __future__ import annotations

from pathlib import Path

from ..common import UserError


def serve(
    run_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    checkpoint: str = "best",
) -> None:
    """Load RUN's model and serve it until Ctrl-C."""
    if max_batch < 1:
        raise UserError(f"--max_batch {max_batch}: must be an integer >= 1")
    if not 0 <= port < 65536:
        raise UserError(f"--port {port}: must be between 0 and 65535")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise UserError(
            f"serve needs its extra ({e.name} is missing): pip install 'scratchlm[serve]'"
        ) from None
    from ..checkpoint import load
    from ..common import pick_device

    lm = load(run_dir, checkpoint, device=pick_device("auto", "--device"))
    app = create_app(lm, Path(run_dir).resolve().name, api_key=api_key, max_batch=max_batch)
    print(f"scratchlm: serving {run_dir} on http://{host}:{port}/ (chat page) and http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")
