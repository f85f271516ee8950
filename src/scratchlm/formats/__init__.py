"""Model file formats: write a run's model as a Hugging Face folder, a GGUF file or a transformers.js (ONNX)
folder, and read a Hugging Face folder into a run (what `scratchlm export` and `scratchlm import` call).

adapters.py maps keys and configs between scratchlm and transformers; hf_folder.py writes the folder,
hf_import.py reads one, gguf.py writes llama.cpp's file, onnx.py transformers.js' folder, card.py the model
card. An export never replaces what it did not write. transformers and gguf (the `[export]` extra), onnx
and onnxscript (`[onnx]`) are imported lazily inside the functions that need them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..common import UserError, atomic_path, atomic_write_text
from ..run import Run

FORMATS = ("hf", "gguf", "onnx", "web")
DTYPES = {
    "hf": ("f32", "f16", "bf16"),
    "gguf": ("f32", "f16", "q8_0", "q4_k_m"),
    "onnx": ("f32",),
    "web": ("f32", "f16", "q8_0"),
}
DTYPE_ALIASES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
# Every exported folder holds this file: --force replaces only a folder that has it (or a GGUF file),
# so a mistyped --out never deletes a run, its parent, or anything else export did not write.
MARKER = ".scratchlm-export"
GGUF_MAGIC = b"GGUF"
# Beside the tokenizer files (hf_folder.TOKENIZER_FILES): what an export made before its marker listed them.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "README.md")


def write_export(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    checkpoint: str = "best",
    dtype: str = "f32",
    force: bool = False,
    vendor: str | Path | None = None,
) -> Path:
    """Write RUN's model as a Hugging Face folder (fmt "hf"), a .gguf file (fmt "gguf"), a transformers.js
    folder (fmt "onnx") or a static web page folder (fmt "web"; `vendor`: a node_modules folder holding
    @wllama/wllama, copied in for offline use)."""
    from ..checkpoint import load

    dtype = _check_request(fmt, dtype, vendor)
    out = Path(out)
    run = Run.at(run_dir)
    if not run.root.is_dir():
        raise UserError(f"{run.root}: no such run directory")
    check_out(out, run.root, fmt, force)
    _check_tools(fmt, dtype, vendor)  # a missing extra fails before the slow part, with nothing written
    lm = load(run.root, checkpoint)
    if fmt == "gguf":
        _write_gguf_file(lm, run, out, dtype)
        _write_modelfile(lm, out, sft=bool(run.base), sample=run.load_config().sample)
        return out
    write_files = _folder_writer(fmt, lm, run, dtype, vendor)

    def write(tmp: Path) -> None:
        write_files(tmp)
        _write_marker(tmp)

    _replace_dir(out, write)
    return out


def _check_request(fmt: str, dtype: str, vendor) -> str:
    """The format's canonical dtype name, or one line naming the flag that does not fit."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: unknown format; use {', '.join(FORMATS)}")
    if vendor is not None and fmt != "web":
        raise UserError(f"--vendor: only --format web uses it, not {fmt}")
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES[fmt]:
        raise UserError(f"--dtype {dtype}: {fmt} export supports {', '.join(DTYPES[fmt])}")
    return dtype


def _check_tools(fmt: str, dtype: str, vendor) -> None:
    if dtype == "q4_k_m":
        from .gguf import llama_cpp_quantizer

        llama_cpp_quantizer()
    if fmt == "web":
        from .webpage import check_vendor

        check_vendor(vendor)
    if fmt == "onnx":
        from .onnx import check_onnx_installed

        check_onnx_installed()


def _folder_writer(fmt: str, lm, run: Run, dtype: str, vendor):
    """A function that writes the export's files into a (temporary) folder."""
    if fmt == "web":
        from .webpage import write_web

        return lambda tmp: write_web(lm, run.tokenizer_dir, tmp, dtype, run.root.name, bool(run.base), vendor)
    from .adapters import check_exportable

    check_exportable(lm.config.model)  # the onnx folder's config.json is the hf export's: the same models
    if fmt == "onnx":
        from .onnx import write_onnx_folder

        return lambda tmp: write_onnx_folder(lm, run.tokenizer_dir, tmp)
    from .adapters import hf_class
    from .card import model_card
    from .hf_folder import write_hf_folder

    card = model_card(lm, run.root, hf_class(lm.config.model))
    return lambda tmp: write_hf_folder(lm, run.tokenizer_dir, tmp, dtype, card)


def _write_gguf_file(lm, run: Run, out: Path, dtype: str) -> None:
    from .gguf import write_gguf

    with atomic_path(out) as tmp:
        if dtype != "q4_k_m":
            write_gguf(lm, run.tokenizer_dir, tmp, dtype, name=run.root.name)
            return
        from .gguf import quantize_gguf

        # llama.cpp's quantizer reads an f16 file: written beside the output, removed whatever happens.
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as d:
            write_gguf(lm, run.tokenizer_dir, Path(d) / "f16.gguf", "f16", name=run.root.name)
            quantize_gguf(Path(d) / "f16.gguf", tmp, dtype)


def _write_modelfile(lm, out: Path, sft: bool, sample) -> None:
    """<stem>.Modelfile beside the .gguf, for Ollama; a file of that name export did not write stays."""
    from .gguf import MODELFILE_MARKER, gguf_arch, modelfile

    path = out.with_name(out.stem + ".Modelfile")
    if path.exists() and not path.read_text(encoding="utf-8", errors="replace").startswith(MODELFILE_MARKER):
        print(f"note: {path} exists and was not written by `scratchlm export`: kept", file=sys.stderr)
        return
    atomic_write_text(path, modelfile(lm, out.name, sft, sample))
    if gguf_arch(lm.config.model) == "qwen3":  # the file's own caution, where a user sees it
        print(
            f"note: {path.name}: Ollama tokenizes qwen3 (QK-norm) files its own way, not as scratchlm does; "
            "for Ollama, train with --model.qk-norm false (docs/deploy.md, Ollama)",
            file=sys.stderr,
        )


def _write_marker(folder: Path) -> None:
    """The marker, listing what the export wrote into `folder` (what a later --force may replace)."""
    written = sorted(p.name for p in folder.iterdir())
    (folder / MARKER).write_text(
        "Written by `scratchlm export`: `--force` replaces the files listed below and keeps the rest.\n"
        + "".join(f"{name}\n" for name in written),
        encoding="utf-8",
    )


def check_out(out: Path, run_root: Path, fmt: str, force: bool) -> None:
    """Refuse an --out that is, holds or sits inside a run, or that exists and was not written by export."""
    where, run_root = out.resolve(), run_root.resolve()
    beside = run_root.with_name(
        run_root.name + {"hf": "-hf", "gguf": ".gguf", "web": "-web", "onnx": "-onnx"}[fmt]
    )
    owner = next((p for p in (where, *where.parents) if Run.at(p).is_run()), None)
    if owner is not None:
        relation = "is the run directory" if owner == where else f"is inside the run directory {owner}"
        raise UserError(f"--out {out}: {relation}; export outside every run, e.g. --out {beside}")
    if where == run_root or where in run_root.parents:
        raise UserError(f"--out {out}: holds the run {run_root}; export to a new path, e.g. --out {beside}")
    if not out.exists():
        return
    if fmt == "gguf":
        if out.is_dir():
            raise UserError(f"--out {out}: is a folder; GGUF export writes one file, e.g. --out model.gguf")
        with open(out, "rb") as f:
            if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise UserError(
                    f"--out {out}: exists and is not a GGUF file; --force replaces only an earlier .gguf "
                    "export: choose another path"
                )
    elif not out.is_dir():
        raise UserError(f"--out {out}: is a file; {fmt} export writes a folder: choose another path")
    elif not any(out.iterdir()):
        return  # an empty folder: nothing to lose
    elif not (out / MARKER).is_file():
        raise UserError(
            f"--out {out}: exists and was not written by `scratchlm export` (no {MARKER} in it); "
            "choose another path, or move it away yourself"
        )
    elif any(Run.at(p).is_run() for p in out.rglob("*") if p.is_dir()):
        raise UserError(f"--out {out}: a scratchlm run was put inside this export; move it out first")
    if not force:
        raise UserError(f"--out {out}: already exists; choose another path or add --force to replace it")


def _replace_dir(out: Path, write) -> None:
    """Build the folder under a temporary name beside `out`, then swap it in: never half a folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        # mkdtemp makes 0700 and some writers 0600 files: give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if out.is_dir():
            _keep_users_files(out, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exported_names(folder: Path) -> set[str]:
    """What an earlier export wrote into `folder`: the names its marker lists (an export made before the
    marker listed them: the files every export writes)."""
    from .hf_folder import TOKENIZER_FILES

    listed = (folder / MARKER).read_text(encoding="utf-8").splitlines()[1:]
    return {MARKER, *listed} if listed else {MARKER, *MODEL_FILES, *TOKENIZER_FILES}


def _keep_users_files(old: Path, new: Path) -> None:
    """Move what the user added to an earlier export folder into the new one, so --force replaces only what
    export wrote (a notes file, a Modelfile, an app's assets stay)."""
    exported = _exported_names(old) if (old / MARKER).is_file() else set()
    for entry in old.iterdir():
        if entry.name not in exported and not (new / entry.name).exists():
            os.replace(entry, new / entry.name)


def import_run(hf_dir: str | Path, run_dir: str | Path) -> Path:
    """`scratchlm import HF_DIR RUN`: a Hugging Face GPT-2 / Llama / Qwen3 folder → a scratchlm run."""
    from .hf_import import import_hf

    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if not hf_dir.is_dir():
        raise UserError(f"{hf_dir}: no such folder")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: already exists and is not empty; import into a new run directory")
    # Staged like an export: a failed import leaves no half run behind.
    _replace_dir(run_dir, lambda tmp: import_hf(hf_dir, tmp))
    return run_dir
