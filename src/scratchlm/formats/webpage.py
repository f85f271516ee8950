"""The static web page export: model.gguf run in the browser by llama.cpp compiled to WebAssembly (wllama).

Why wllama over transformers.js + ONNX: it runs the GGUF file scratchlm already writes and tests against
llama.cpp (greedy parity), so the page needs no second export format, and the tiny to small models this
project trains fit its single-threaded build, which any static host serves (no COOP/COEP headers).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from ..common import UserError

WLLAMA_VERSION = "3.13.0"
CDN = f"https://cdn.jsdelivr.net/npm/@wllama/wllama@{WLLAMA_VERSION}/esm"
PAGE_FILES = ("index.html", "page.js", "page.css")
# What the page needs from the npm package: the ES module (its worker code is inlined) and the wasm.
VENDOR_FILES = {"esm/index.js": "index.js", "esm/wasm/wllama.wasm": "wllama.wasm"}


def check_vendor(vendor: str | Path | None) -> Path | None:
    """The wllama package inside --vendor NODE_MODULES_DIR, or a one-line error saying how to get it."""
    if vendor is None:
        return None
    pkg = Path(vendor) / "@wllama" / "wllama"
    missing = [name for name in VENDOR_FILES if not (pkg / name).is_file()]
    if missing:
        raise UserError(
            f"--vendor {vendor}: no {pkg / missing[0]}; run `npm install --ignore-scripts --prefix DIR "
            f"@wllama/wllama@{WLLAMA_VERSION}` and pass DIR/node_modules"
        )
    return pkg


def page_config(lm, run_name: str, is_chat: bool, vendored: bool) -> dict:
    """What the page reads from scratchlm.json: chat or base, template pieces, stops, sampling, context."""
    from ..chat_template import END, ROLE_TOKENS

    s = lm.config.sample
    runtime = (
        {"module": "vendor/wllama/index.js", "wasm": "vendor/wllama/wllama.wasm"}
        if vendored
        else {"module": f"{CDN}/index.js", "wasm": f"{CDN}/wasm/wllama.wasm"}
    )
    return {
        "name": run_name,
        "model": "model.gguf",
        "chat": is_chat,
        # llama.cpp adds <|bos|> itself (the GGUF's add_bos_token), so the prompt starts after it.
        "template": {"user_prefix": ROLE_TOKENS["user"], "user_suffix": END + ROLE_TOKENS["assistant"]},
        "stop": list(s.stop),
        "sample": {
            "max_new_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
        },
        "n_ctx": lm.config.model.block_size,
        "runtime": runtime,
        "wllama_version": WLLAMA_VERSION,
    }


def write_web(lm, tokenizer_dir: Path, out: Path, dtype: str, name: str, is_chat: bool, vendor) -> None:
    """Fill `out` with the page, its script and style, model.gguf, scratchlm.json and (with --vendor) the
    runtime under vendor/wllama/."""
    from .gguf import write_gguf

    pkg = check_vendor(vendor)
    static = resources.files("scratchlm.formats") / "web"
    for fname in PAGE_FILES:
        (out / fname).write_bytes((static / fname).read_bytes())
    write_gguf(lm, tokenizer_dir, out / "model.gguf", dtype, name=name)
    if pkg is not None:
        (out / "vendor" / "wllama").mkdir(parents=True)
        for src, dst in VENDOR_FILES.items():
            shutil.copyfile(pkg / src, out / "vendor" / "wllama" / dst)
    config = page_config(lm, name, is_chat, pkg is not None)
    (out / "scratchlm.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
