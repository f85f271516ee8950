"""Export to Hugging Face and GGUF, import back: parity with transformers and llama.cpp, round trips,
and the one-line errors of bad input."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

import scratchlm
from scratchlm.chat_template import LAYOUT, jinja_template, render, stop_ids
from scratchlm.checkpoint import save_best, save_checkpoint, weights_of
from scratchlm.cli import main
from scratchlm.config import RunConfig, SampleConfig
from scratchlm.decode import generate_ids, prompt_ids_for
from scratchlm.formats import import_run
from scratchlm.formats import write_export as export
from scratchlm.model import GPT
from scratchlm.run import Run
from scratchlm.tokenizer import KINDS, Tokenizer
from scratchlm.tokenizer.sentencepiece import _SCORE_GRID

from .conftest import missing_tool, shared_file

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

PROMPTS = ["Prince Andrew said that", "吾輩は猫である。名前はまだ無い。"]
FLAVOURS = {
    "gpt2": dict(flavour="gpt2"),
    "llama": dict(flavour="llama", bias=False, n_kv_head=1, tie_embeddings=False),
}
# The HF folder tests also cover GPT-2's tanh GELU ("gpt2" above is the default, exact GELU).
HF_CASES = FLAVOURS | {"gpt2-gelu_tanh": dict(flavour="gpt2", activation="gelu_tanh")}


def tiny_config(corpus: Path) -> RunConfig:
    """A ~150k-parameter model over a 600-token vocabulary: every export test runs in about a second."""
    cfg = RunConfig()
    cfg.data.inputs = [str(corpus)]
    cfg.tokenizer.vocab_size = 600
    cfg.model.block_size, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd = 128, 2, 2, 64
    cfg.train.batch_size = 8
    return cfg


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """Prepared (tokenizer + shards) but untrained runs, one per tokenizer kind."""
    from scratchlm.commands.prepare import prepare

    out = {}
    for name in (*KINDS, "bpe-nfkc"):
        cfg = tiny_config(tiny_corpus)
        cfg.tokenizer.kind = name.split("-")[0]
        cfg.tokenizer.normalization = "nfkc" if name.endswith("nfkc") else "identity"
        out[name] = tmp_path_factory.mktemp("prepared") / name
        prepare(out[name], cfg)
    return out


def make_run(prepared: dict[str, Path], dst: Path, kind: str = "unigram", edit=None, **model_kw) -> Path:
    """A run with a random checkpoint, its weights pushed off init so every tensor shapes the output
    and greedy decoding does not sit on near-ties; `edit(model)` may change them before they are saved."""
    shutil.copytree(prepared[kind], dst)
    run = Run.at(dst)
    cfg = run.load_config()
    for k, v in model_kw.items():
        setattr(cfg.model, k, v)
    run.save_config(cfg)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.15)
        if edit is not None:
            edit(model)
    tok = Tokenizer.load(run.tokenizer_dir)
    weights = weights_of(model.state_dict(), cfg.model.tie_embeddings)
    save_checkpoint(run, 7, weights, cfg, tok.hash, {"step": 7}, keep_last=2)
    save_best(run, 7, weights, cfg, tok.hash, val_loss=5.0)
    (dst / "eval.json").write_text(json.dumps({"source": "val", "step": 7, "loss": 5.0, "perplexity": 148.4}))
    return dst


def prompt_ids(lm, prompt: str) -> list[int]:
    return prompt_ids_for(lm.tokenizer, prompt, lm.config.model.block_size)  # what `scratchlm sample` feeds


def greedy(lm, ids: list[int], n: int = 20) -> list[int]:
    cfg = SampleConfig(temperature=0, max_new_tokens=n)
    return list(generate_ids(lm.model, ids, cfg, stop_ids=set(stop_ids(lm.tokenizer))))


# ---------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("case", HF_CASES)
def test_hf_export_loads_natively_and_matches(prepared, tmp_path, case, capsys):
    flavour = HF_CASES[case]["flavour"]
    run = make_run(prepared, tmp_path / "run", **HF_CASES[case])
    (run / "metrics.csv").write_text("step,tokens,val_loss\n5,5120,6.1\n7,7168,5.0\n")  # 1024 tokens/step
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert (out / "tokenizer.model").read_bytes() == (run / "tokenizer" / "tokenizer.model").read_bytes()

    hf = transformers.AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[flavour]
    if flavour == "gpt2":
        want = {"gpt2": "gelu", "gpt2-gelu_tanh": "gelu_new"}[case]
        assert json.loads((out / "config.json").read_text())["activation_function"] == want
    assert hf.get_input_embeddings().weight.shape[0] == 600  # padding rows sliced off
    lm = scratchlm.load(run)
    for prompt in PROMPTS:
        ids = prompt_ids(lm, prompt)
        x = torch.tensor([ids])
        with torch.no_grad():
            torch.testing.assert_close(hf(x).logits, lm.model(x)[0], atol=1e-4, rtol=0)
        ours = greedy(lm, ids)
        theirs = hf.generate(x, do_sample=False, max_new_tokens=len(ours))[0, len(ids) :].tolist()
        assert theirs == ours and len(set(ours)) > 3, (ours, theirs)

    card = (out / "README.md").read_text()
    n_params = sum(p.numel() for p in hf.parameters())
    for needle in (
        "## Architecture",
        "wp_slice.txt",
        "## Training",
        "perplexity: 148.4",
        "7 steps, 7,168 tokens seen",
        f"{n_params:,}",
        f"{lm.model.num_params():,} parameters, as `scratchlm train` counts them",  # the count train prints
        {"gpt2": "exact (erf) GELU", "gpt2-gelu_tanh": "tanh-approximate GELU", "llama": "SwiGLU"}[case],
    ):
        assert needle in card, needle
    # The card's usage example runs as written and continues the prompt greedily as scratchlm does.
    code = card.split("```python\n")[1].split("```")[0].replace("PATH", str(out))
    capsys.readouterr()
    exec(code, {})
    start = prompt_ids(lm, "Once upon a time")
    # (Decoded by transformers' tokenizer: random weights emit broken UTF-8, which the two libraries
    # replace differently.)
    expected = transformers.AutoTokenizer.from_pretrained(out).decode(
        start + greedy(lm, start, 50), skip_special_tokens=True
    )
    assert capsys.readouterr().out.rstrip("\n") == expected
    gen = json.loads((out / "generation_config.json").read_text())
    # generate() from nothing starts where `scratchlm sample ''` starts.
    start = prompt_ids(lm, "")
    assert gen["eos_token_id"] == stop_ids(lm.tokenizer) and [gen["bos_token_id"]] == start
    assert hf.generate(do_sample=False, max_new_tokens=8)[0].tolist() == start + greedy(lm, start, 8)


@pytest.mark.parametrize("kind", (*KINDS, "bpe-nfkc"))
def test_hf_tokenizer_of_every_kind_loads_with_autotokenizer_and_imports_back(prepared, tmp_path, kind):
    run = make_run(prepared, tmp_path / "run", kind=kind)
    out = tmp_path / "hf"
    export(run, "hf", out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    lm = scratchlm.load(run)
    tok = lm.tokenizer
    hf_config = json.loads((out / "config.json").read_text())
    assert [hf_tok.bos_token_id] == [hf_config["bos_token_id"]] == prompt_ids(lm, "")
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.eos_id, tok.pad_id)
    texts = PROMPTS + ["  two  spaces\tand a tab\n", "鬱蒼 ½ ﬁ"]  # unseen characters: byte fallback
    for text in texts:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))  # == text unless NFKC
    chat = [{"role": "user", "content": "Who is Pierre?"}]
    ids = hf_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == render(chat, tok, add_generation_prompt=True).ids
    assert_typed_specials_stay_text(hf_tok, tok)

    import_run(out, tmp_path / "imported")
    back = scratchlm.load(tmp_path / "imported").tokenizer
    assert (back.kind, back.hash) == (tok.kind, tok.hash)
    assert [back.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    # And out again: the same tokenizer files (a SentencePiece tokenizer.json is rebuilt on import).
    export(tmp_path / "imported", "hf", tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        again, first = (json.loads((d / name).read_text()) for d in (tmp_path / "again", out))
        assert again == first, name


def assert_typed_specials_stay_text(hf_tok, tok):
    """chat_template's rule, user text is text, holds in transformers where it is told which text is
    typed: `split_special_tokens=True` for plain text, `sanitize_control_tokens=True` for chats."""
    typed = "hi<|end|><|assistant|>sure<|eos|> <unk>"
    plain = hf_tok(typed, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert plain == tok.encode(typed)
    if "sanitize_control_tokens" not in inspect.signature(hf_tok.apply_chat_template).parameters:
        return  # transformers < 5: apply_chat_template cannot tell typed tokens from the template's
    chat = [{"role": "system", "content": typed}, {"role": "user", "content": "<|end|>" + typed}]
    ids = hf_tok.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=False, sanitize_control_tokens=True
    )
    assert list(ids) == render(chat, tok, add_generation_prompt=True).ids


def test_hf_chat_template_renders_scratchlm_chat_format(prepared, tmp_path):
    from jinja2 import Template

    run = make_run(prepared, tmp_path / "run")
    out = tmp_path / "hf"
    export(run, "hf", out)
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == jinja_template()
    # The export's BOS is the token `scratchlm sample` starts prompts with, and training documents too.
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"]) == ("<|bos|>", "<|eos|>", "<|pad|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = Template(tc["chat_template"]).render(
        messages=messages, bos_token="<|bos|>", add_generation_prompt=True
    )
    # The run's own tokenizer folder carries the template too.
    own = transformers.AutoTokenizer.from_pretrained(run / "tokenizer")
    ids = own.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == render(messages, scratchlm.load(run).tokenizer, add_generation_prompt=True).ids
    assert text == "<|bos|><|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>"
    assert f"Chat format: `{LAYOUT}`" in (out / "README.md").read_text()


@pytest.mark.parametrize("case", HF_CASES)
def test_import_round_trip_gives_identical_tensors_and_a_usable_run(prepared, tmp_path, case, capsys):
    flavour = HF_CASES[case]["flavour"]
    run = make_run(prepared, tmp_path / "run", **HF_CASES[case])
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "a"), "--dtype", "f32"]) == 0
    assert main(["import", str(tmp_path / "a"), str(tmp_path / "imported")]) == 0
    assert main(["export", str(tmp_path / "imported"), "--format", "hf", "--out", str(tmp_path / "b")]) == 0
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    lm, imported = scratchlm.load(run), scratchlm.load(tmp_path / "imported", checkpoint="last")
    assert imported.config.model.flavour == flavour and imported.step == 0
    assert imported.config.model.activation == lm.config.model.activation
    ids = prompt_ids(lm, PROMPTS[0])
    assert greedy(imported, ids) == greedy(lm, ids)
    # `scratchlm eval` and `scratchlm sample` accept the imported run and agree with the original one.
    text = tmp_path / "t.txt"
    text.write_text("Prince Andrew looked at the sky. " * 20)
    for r in (run, tmp_path / "imported"):
        args = [str(r), "--text", str(text), "--prompts", "[]", "--device", "cpu"]
        assert main(["eval", *args]) == 0
    loss = [json.loads((r / "eval.json").read_text())["loss"] for r in (run, tmp_path / "imported")]
    assert loss[0] == pytest.approx(loss[1], abs=1e-5)
    for r in (run, tmp_path / "imported"):
        assert main(["sample", str(r), "Prince", "--temperature", "0", "--max_new_tokens", "8"]) == 0
    out = capsys.readouterr().out.split("\n")
    samples = [line for line in out if line.startswith("Prince")]
    assert len(samples) == 2 and samples[0] == samples[1], samples


@pytest.mark.parametrize("dtype, torch_dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_hf_half_precision_export_rounds_each_weight_once(prepared, tmp_path, dtype, torch_dtype):
    run = make_run(prepared, tmp_path / "run", **FLAVOURS["llama"])
    export(run, "hf", tmp_path / "hf", dtype=dtype)
    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch_dtype}
    import_run(tmp_path / "hf", tmp_path / "imported")
    ours = scratchlm.load(run).model.state_dict()
    back = scratchlm.load(tmp_path / "imported").model.state_dict()
    V = 600
    for k, v in ours.items():
        want = (v[:V] if k in ("transformer.wte.weight", "lm_head.weight") else v).to(torch_dtype).float()
        got = back[k][:V] if k in ("transformer.wte.weight", "lm_head.weight") else back[k]
        assert torch.equal(got, want), k


@pytest.mark.slow
def test_imported_run_trains_on_with_resume(prepared, tiny_corpus, tmp_path):
    run = make_run(prepared, tmp_path / "run")
    imported = tmp_path / "imported"
    export(run, "hf", tmp_path / "hf")
    import_run(tmp_path / "hf", imported)
    assert main(["prepare", str(imported), "--data.inputs", f"[{tiny_corpus}]"]) == 0  # keeps its tokenizer
    # A tiny learning rate, so the weights after 2 steps are still (nearly) the imported ones.
    args = ["--train.max_steps", "2", "--train.eval_interval", "2", "--train.eval_batches", "1"]
    args += ["--train.lr", "1e-6", "--train.batch_size", "4"]
    assert main(["train", str(imported), "--resume", *args]) == 0
    before = scratchlm.load(run).model.state_dict()
    after = scratchlm.load(imported, checkpoint="last")
    assert after.step == 2
    w = after.model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    torch.testing.assert_close(w, before["transformer.h.0.attn.c_attn.weight"], atol=1e-3, rtol=0)
    assert not torch.equal(w, before["transformer.h.0.attn.c_attn.weight"])  # it did train


# ---------------------------------------------------------------- GGUF
def _field(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return (
            [f.contents(i) for i in range(len(f.data))]
            if f.types[-1] != gguf.GGUFValueType.STRING
            else f.contents()
        )
    return f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: interleaved pairs back to rotate-half halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("dtype, atol", [("f32", 0.0), ("f16", 1e-3), ("q8_0", 1e-2)])
def test_gguf_reads_back_with_metadata_and_tensors(prepared, tmp_path, flavour, dtype, atol):
    run = make_run(prepared, tmp_path / "run", **FLAVOURS[flavour])
    path = tmp_path / "m.gguf"
    assert main(["export", str(run), "--format", "gguf", "--out", str(path), "--dtype", dtype]) == 0
    lm = scratchlm.load(run)
    cfg, tok = lm.config.model, lm.tokenizer
    r = gguf.GGUFReader(path)
    arch = _field(r, "general.architecture")
    assert arch == flavour
    assert _field(r, f"{arch}.context_length") == cfg.block_size
    assert _field(r, f"{arch}.block_count") == cfg.n_layer
    assert _field(r, f"{arch}.embedding_length") == cfg.n_embd
    assert _field(r, f"{arch}.feed_forward_length") == cfg.ffn_hidden
    assert _field(r, f"{arch}.attention.head_count") == cfg.n_head
    if flavour == "llama":
        assert _field(r, "llama.attention.head_count_kv") == cfg.kv_heads
        assert _field(r, "llama.rope.freq_base") == cfg.rope_theta
        assert _field(r, "llama.rope.dimension_count") == cfg.n_embd // cfg.n_head
    # The default Unigram kind as llama.cpp's PLaMo-2 tokenizer: plain-text pieces, scores llama.cpp rounds
    # exactly (score * 1e4 is an integer), -inf for control tokens so typed "<|end|>" stays text.
    assert _field(r, "tokenizer.ggml.model") == "plamo2"
    sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer" / "tokenizer.model"))
    tokens, scores = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.scores")
    assert len(tokens) == tok.vocab_size and tokens[tok.eos_id] == "<|eos|>"
    space = next(i for i in range(sp.get_piece_size()) if sp.id_to_piece(i).startswith("\u2581"))
    assert tokens[space] == sp.id_to_piece(space).replace("\u2581", " ")
    for i in (space, *sp.encode("the")):
        assert scores[i] * 1e4 == pytest.approx(round(scores[i] * 1e4), abs=1e-3)
        assert round(scores[i] * 1e4) == sp.get_score(i) * _SCORE_GRID
    assert scores[tok.eos_id] == -np.inf and scores[sp.unk_id()] == -np.inf
    types = _field(r, "tokenizer.ggml.token_type")
    assert types[tok.bos_id] == gguf.TokenType.CONTROL and types[sp.unk_id()] == gguf.TokenType.UNKNOWN
    byte_a = sp.piece_to_id("<0x41>")
    assert (tokens[byte_a], types[byte_a]) == ("<0x41>", gguf.TokenType.BYTE)
    assert types[sp.piece_to_id("\n")] == gguf.TokenType.USER_DEFINED
    # Chat: scratchlm's template, <|end|> ends a turn (llama.cpp stops there), <|eos|> a document.
    assert _field(r, "tokenizer.chat_template") == jinja_template()
    assert _field(r, "tokenizer.ggml.eot_token_id") == tok.special_ids["<|end|>"]
    # llama.cpp's automatic BOS is the token `scratchlm sample` starts prompts with.
    assert [_field(r, "tokenizer.ggml.bos_token_id")] == prompt_ids(lm, "")
    assert _field(r, "tokenizer.ggml.add_bos_token") is True
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_id

    sd = {k: v.numpy() for k, v in lm.model.state_dict().items()}
    tensors = {t.name: t for t in r.tensors}
    qsize = cfg.n_embd
    expected = {
        "token_embd.weight": sd["transformer.wte.weight"][: cfg.vocab_size],
        "output_norm.weight": sd["transformer.ln_f.weight"],
        "blk.1.attn_norm.weight": sd["transformer.h.1.ln_1.weight"],
        "blk.1.ffn_down.weight": sd["transformer.h.1.mlp.c_proj.weight"],
    }
    if flavour == "gpt2":
        expected["position_embd.weight"] = sd["transformer.wpe.weight"]
        expected["blk.1.attn_qkv.weight"] = sd["transformer.h.1.attn.c_attn.weight"]
        expected["blk.1.attn_qkv.bias"] = sd["transformer.h.1.attn.c_attn.bias"]
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    else:
        up, gate = np.split(sd["transformer.h.1.mlp.c_fc.weight"], 2)  # one Linear, rows [up; gate]
        expected["blk.1.ffn_gate.weight"] = gate
        expected["blk.1.ffn_up.weight"] = up
        expected["blk.1.attn_v.weight"] = sd["transformer.h.1.attn.c_attn.weight"][qsize + qsize // 2 :]
        expected["output.weight"] = sd["lm_head.weight"][: cfg.vocab_size]
        q = gguf.dequantize(tensors["blk.1.attn_q.weight"].data, tensors["blk.1.attn_q.weight"].tensor_type)
        np.testing.assert_allclose(
            _unpermute(q.reshape(qsize, -1), cfg.n_head),
            sd["transformer.h.1.attn.c_attn.weight"][:qsize],
            atol=atol,
        )
    for name, want in expected.items():
        t = tensors[name]
        got = gguf.dequantize(t.data, t.tensor_type).reshape(want.shape)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=name)
        assert t.tensor_type == (
            gguf.GGMLQuantizationType.F32
            if want.ndim == 1
            else {
                "f32": gguf.GGMLQuantizationType.F32,
                "f16": gguf.GGMLQuantizationType.F16,
                "q8_0": gguf.GGMLQuantizationType.Q8_0,
            }[dtype]
        ), name


# Other options llama.cpp must honour too: biases in Llama, a tied Llama head, GPT-2 without biases, untied.
VARIANTS = FLAVOURS | {
    "gpt2-gelu_tanh": dict(flavour="gpt2", activation="gelu_tanh"),
    "llama-bias-tied": dict(flavour="llama", bias=True, n_kv_head=2, tie_embeddings=True),
    "gpt2-nobias-untied": dict(flavour="gpt2", bias=False, tie_embeddings=False),
}


@pytest.mark.parametrize(
    ("model_kw", "noted"),
    [
        (dict(flavour="gpt2"), True),
        (dict(flavour="gpt2", activation="gelu_tanh"), False),
        (FLAVOURS["llama"], False),
    ],
)
def test_gguf_export_notes_llama_cpps_tanh_gelu_for_exact_gelu_models(
    prepared, tmp_path, capsys, model_kw, noted
):
    run = make_run(prepared, tmp_path / "run", kind="bpe", **model_kw)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    err = capsys.readouterr().err
    assert ("llama.cpp computes GELU with the tanh approximation" in err) == noted, err
    assert ("--model.activation gelu_tanh" in err) == noted


def test_gguf_char_vocabulary_reads_back(prepared, tmp_path):
    """A char run's GGUF vocabulary: llama.cpp's "llama" model with the space as "▁", byte tokens typed."""
    run = make_run(prepared, tmp_path / "run", kind="char", flavour="llama")
    export(run, "gguf", tmp_path / "m.gguf")
    tok = scratchlm.load(run).tokenizer
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert _field(r, "tokenizer.ggml.add_space_prefix") is False
    tokens, types = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == tok.vocab_size
    space, byte_a = tok.encode(" ")[0], tok.encode("\x00")[0]
    assert (tokens[space], types[space]) == ("\u2581", gguf.TokenType.NORMAL)
    assert (tokens[byte_a], types[byte_a]) == ("<0x00>", gguf.TokenType.BYTE)
    assert (tokens[tok.eos_id], types[tok.eos_id]) == ("<|eos|>", gguf.TokenType.CONTROL)
    letter = tok.encode("a")[0]
    assert (tokens[letter], types[letter]) == ("a", gguf.TokenType.NORMAL)


@pytest.mark.parametrize(
    "variant, kind",
    [
        ("gpt2", "bpe"),  # exact GELU, run by llama.cpp with its tanh GELU (see gguf.GELU_NOTE)
        ("gpt2-gelu_tanh", "bpe"),
        ("llama", "bpe"),
        ("gpt2-nobias-untied", "bytelevel"),
        ("llama", "char"),
        ("llama-bias-tied", "unigram"),
    ],
)
def test_llama_cpp_greedy_output_equals_scratchlm(prepared, tmp_path, variant, kind):
    Llama = llama_cpp_llama()
    run = make_run(prepared, tmp_path / "run", kind=kind, **VARIANTS[variant])
    path = tmp_path / "m.gguf"
    export(run, "gguf", path, dtype="f32")
    lm = scratchlm.load(run)
    llm = Llama(
        model_path=str(path), n_ctx=lm.config.model.block_size, n_threads=1, verbose=False, logits_all=True
    )
    decoded = []
    try:
        for prompt in PROMPTS + ["  two  spaces\tand a tab\n鬱蒼"]:
            ids = prompt_ids(lm, prompt)
            assert llm.detokenize(ids[1:]) == prompt.encode()  # the GGUF vocabulary spells text back
            # llama.cpp's tokenizer, its automatic BOS included, gives scratchlm's ids; llama.cpp's PLaMo-2
            # tokenizer (Unigram's) adds no BOS, so there the prompt must start with "<|bos|>" itself.
            typed = llm.tokenize(prompt.encode(), add_bos=True, special=False)
            assert typed == (ids if kind != "unigram" else ids[1:]), prompt
            assert llm.tokenize(b"<|bos|>" + prompt.encode(), add_bos=False, special=True) == ids, prompt
            llm.reset()
            llm.eval(ids)
            with torch.no_grad():
                ours_logits = lm.model(torch.tensor([ids]))[0][0].numpy()
            # llama.cpp's CPU kernels land within ~3e-3 of torch here (measured); a wrong map is off by O(1).
            np.testing.assert_allclose(np.asarray(llm.scores[: len(ids)]), ours_logits, atol=1e-2, rtol=0)
            ours = greedy(lm, ids)
            theirs = llama_cpp_greedy(llm, ids, len(ours), lm.tokenizer.eos_id)
            assert theirs == ours, (prompt, ours, theirs)
            decoded += ours
    finally:
        llm.close()
    # Random weights may end a prompt's run early or loop on an id; over the three runs the comparison
    # must still have covered more than a handful of ids.
    assert len(set(decoded)) > 5, decoded


def llama_cpp_greedy(llm, ids: list[int], n: int, eos_id: int) -> list[int]:
    """llama.cpp's greedy continuation of `ids`: up to n tokens, stopping at EOS."""
    theirs = []
    for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        if t == eos_id or len(theirs) == n:
            break
        theirs.append(t)
    return theirs


def llama_cpp_llama():
    try:
        from llama_cpp import Llama
    except ImportError:
        missing_tool("llama-cpp-python is not installed (pip install 'scratchlm[gguf-check]')")
    return Llama


# English, Japanese, mixed, whitespace runs, byte fallback (鬱蒼 is in no tiny vocabulary) and text that
# spells a special token, which stays text in scratchlm and so must in llama.cpp.
TYPED = [
    "Prince Andrew looked at",
    "吾輩は猫である。名前はまだ無い。",
    "JIS X 0213 の文字",
    "  two  spaces\tand a tab\n\nnew paragraph",
    "鬱蒼 ½ <|end|><|user|> <unk> <0x41>",
    "“Oh, don’t speak to me of Austria,” said Prince Vasíli.",
]


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_tokenizes_typed_text_as_scratchlm(prepared, tmp_path, kind):
    """What a user types into llama.cpp (llama-cli -p, llama-server's prompt) gets scratchlm's ids."""
    Llama = llama_cpp_llama()
    run = make_run(prepared, tmp_path / "run", kind=kind, flavour="llama")
    export(run, "gguf", tmp_path / "m.gguf")
    tok = Tokenizer.load(run / "tokenizer")
    llm = Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    # A typed "▁" is three byte tokens in scratchlm; llama.cpp's "llama" type (bpe's, char's) reads it as a
    # space.
    texts = TYPED + (["a▁b ▁"] if kind in ("unigram", "bytelevel") else [])
    try:
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text
            assert llm.detokenize(tok.encode(text)) == text.encode(), text
    finally:
        llm.close()


@pytest.mark.parametrize("kind", ("unigram", "bpe", "bytelevel"))
def test_llama_cpp_tokenizes_held_out_prose_as_scratchlm(tmp_path, kind):
    """Every held-out line of English and Japanese prose gets scratchlm's ids in llama.cpp. Unigram
    vocabularies once differed on ~1% of such lines, wherever two segmentations scored exactly the same
    (see tokenizer/sentencepiece._SCORE_GRID)."""
    from scratchlm.config import TokenizerConfig
    from scratchlm.formats.gguf import write_vocab_gguf
    from scratchlm.tokenizer import train_tokenizer

    Llama = llama_cpp_llama()
    wp = shared_file("war_and_peace.txt").read_text(encoding="utf-8").split("\n")
    neko = shared_file("soseki_wagahai_neko.txt").read_text(encoding="utf-8").split("\n")
    tok = train_tokenizer(["\n".join(wp[:20_000]), "\n".join(neko[:1_000])], TokenizerConfig(kind=kind))
    tok.save(tmp_path / "tok")
    write_vocab_gguf(tok, tmp_path / "tok", tmp_path / "v.gguf")
    lines = [s for s in wp[40_000:42_000] + neko[1_400:2_000] if s.strip()]
    llm = Llama(model_path=str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
    try:
        differ = [s for s in lines if llm.tokenize(s.encode(), add_bos=False, special=False) != tok.encode(s)]
    finally:
        llm.close()
    assert len(lines) > 2_000 and differ == [], (len(differ), differ[:3])


def test_llama_cpp_unigram_breaks_exact_score_ties_the_other_way(prepared, tmp_path):
    """The one known difference of the "plamo2" vocabulary (see gguf._add_unigram_vocab): where two
    segmentations score exactly the same, SentencePiece keeps the longest last piece and llama.cpp the
    longest first one. Same text, same score, other ids; this test notices if llama.cpp changes."""
    Llama = llama_cpp_llama()
    run = make_run(prepared, tmp_path / "run", flavour="llama")
    export(run, "gguf", tmp_path / "m.gguf")
    sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer" / "tokenizer.model"))
    text = "    FIRST"
    ours = sp.encode(text)
    llm = Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    try:
        theirs = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert llm.detokenize(theirs) == text.encode()
    finally:
        llm.close()
    assert [sp.id_to_piece(i) for i in ours[:2]] == ["\u2581", "\u2581\u2581\u2581"]
    assert theirs == ours[1::-1] + ours[2:]  # the same pieces, "▁▁▁" first
    assert sum(sp.get_score(i) for i in theirs) == sum(sp.get_score(i) for i in ours)


def test_llama_cpp_chat_completion_renders_scratchlm_template_and_stops_at_end(prepared, tmp_path):
    """create_chat_completion (the GGUF's Jinja template, llama.cpp's end-of-turn) feeds the model
    chat_template.render's ids and ends the reply at <|end|>."""
    Llama = llama_cpp_llama()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Pierre?"}]
    base = scratchlm.load(make_run(prepared, tmp_path / "base", **FLAVOURS["llama"]))
    tok = base.tokenizer
    prompt = render(messages, tok, add_generation_prompt=True).ids
    reply = greedy(base, prompt, 16)
    # The model ends its reply after k >= 3 tokens once <|end|> takes the head row of the token it picked
    # there (an untied head: the inputs, so the first k tokens, stay the same).
    k = next(i for i in range(3, len(reply)) if reply[i] not in reply[:i])
    end = tok.special_ids["<|end|>"]

    def swap(model):
        w = model.lm_head.weight
        w[[reply[k], end]] = w[[end, reply[k]]]

    run = make_run(prepared, tmp_path / "run", edit=swap, **FLAVOURS["llama"])
    assert greedy(scratchlm.load(run), prompt, 16) == reply[:k]
    export(run, "gguf", tmp_path / "m.gguf")
    llm = Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, n_threads=1, verbose=False)
    try:
        out = llm.create_chat_completion(messages=messages, max_tokens=16, temperature=0, repeat_penalty=1.0)
        fed = llm.input_ids[: llm.n_tokens].tolist()  # prompt and reply as evaluated; <|end|> only sampled
    finally:
        llm.close()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", out
    assert out["usage"]["prompt_tokens"] == len(prompt) and fed == prompt + reply[:k]
    # Random weights emit stray UTF-8 bytes: SentencePiece decodes them as U+FFFD, llama-cpp-python drops them
    assert choice["message"]["content"] == tok.decode(reply[:k]).replace("\ufffd", "")


# ---------------------------------------------------------------- bad input
def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchlm: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line_exit_2(prepared, tmp_path, capsys):
    untrained = tmp_path / "untrained"
    shutil.copytree(prepared["unigram"], untrained)
    assert "no checkpoint" in _error(
        capsys, ["export", str(untrained), "--format", "hf", "--out", str(tmp_path / "x")]
    )

    run = make_run(prepared, tmp_path / "run")
    assert "--format tflite: must be one of 'hf', 'gguf', 'onnx'" in _error(
        capsys, ["export", str(run), "--format", "tflite", "--out", str(tmp_path / "x")]
    )
    assert "--dtype f16: onnx export supports f32" in _error(
        capsys, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x"), "--dtype", "f16"]
    )
    assert "--dtype q8_0" in _error(
        capsys, ["export", str(run), "--format", "hf", "--out", str(tmp_path / "x"), "--dtype", "q8_0"]
    )
    out = tmp_path / "exists"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert "--force" in _error(capsys, ["export", str(run), "--format", "hf", "--out", str(out)])
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--format", "hf", "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and (out / "keep.txt").read_text() == "mine"  # kept

    assert "is a folder" in _error(
        capsys, ["export", str(run), "--format", "gguf", "--out", str(out), "--force"]
    )

    qk = make_run(prepared, tmp_path / "qk", flavour="llama", qk_norm=True)
    assert "qk_norm" in _error(capsys, ["export", str(qk), "--format", "hf", "--out", str(tmp_path / "y")])
    assert not (tmp_path / "y").exists()

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    err = _error(capsys, ["import", str(bert), str(tmp_path / "imported")])
    assert "model_type='bert'" in err and "gpt2, llama and qwen3" in err
    assert not (tmp_path / "imported").exists()
    assert "not empty" in _error(capsys, ["import", str(out), str(run)])

    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF mine")
    assert "--force" in _error(capsys, ["export", str(run), "--format", "gguf", "--out", str(gguf_file)])
    assert gguf_file.read_bytes() == b"GGUF mine"

    # A GPT-2 folder whose byte-level tokenizer lacks scratchlm's special tokens (as a hub GPT-2 would).
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 2}))
    tk = HFTokenizer(models.BPE({"a": 0, "b": 1}, []))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.save(str(foreign / "tokenizer.json"))
    err = _error(capsys, ["import", str(foreign), str(tmp_path / "imported")])
    assert "cannot use its bytelevel tokenizer" in err and "<|bos|>" in err, err
    assert not (tmp_path / "imported").exists()


def test_export_replaces_only_what_export_wrote(prepared, tmp_path, capsys):
    """--out with --force once deleted the run itself, or every run beside it: it must name the path and
    refuse, leaving everything in place."""
    runs = tmp_path / "runs"
    run = make_run(prepared, runs / "run")
    other = make_run(prepared, runs / "other")
    (runs / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def refused(out: Path, fmt: str = "hf", *flags: str) -> str:
        err = _error(capsys, ["export", str(run), "--format", fmt, "--out", str(out), "--force", *flags])
        assert f"--out {out}:" in err
        return err

    assert "is the run directory" in refused(run)
    assert "is the run directory" in refused(other)
    assert f"is inside the run directory {run.resolve()}" in refused(run / "hf")
    assert f"is inside the run directory {run.resolve()}" in refused(run / "model.gguf", "gguf")
    assert "holds the run" in refused(runs)
    assert "holds the run" in refused(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("mine")
    assert "not written by `scratchlm export`" in refused(mine)
    assert "is a file" in refused(runs / "notes.txt")
    assert "not a GGUF file" in refused(runs / "notes.txt", "gguf")
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == sorted([*before, Path("mine"), Path("mine/a.txt")])
    assert (runs / "notes.txt").read_text() == "mine" and (mine / "a.txt").read_text() == "mine"

    # What export wrote it may replace; an empty folder holds nothing to lose.
    out, empty, gguf_out = tmp_path / "out-hf", tmp_path / "empty", tmp_path / "m.gguf"
    empty.mkdir()
    for path, fmt in ((out, "hf"), (empty, "hf"), (gguf_out, "gguf")):
        assert main(["export", str(run), "--format", fmt, "--out", str(path)]) == 0
        assert main(["export", str(run), "--format", fmt, "--out", str(path), "--force"]) == 0
    assert (out / ".scratchlm-export").is_file() and (empty / "config.json").is_file()
    shutil.copytree(other, out / "stray-run")
    capsys.readouterr()
    assert "a scratchlm run was put inside" in refused(out)
    assert (out / "stray-run" / "checkpoints").is_dir()


def test_import_of_a_broken_folder_is_one_line_exit_2(prepared, tmp_path, capsys):
    run = make_run(prepared, tmp_path / "run")
    good = export(run, "hf", tmp_path / "good")
    config = json.loads((good / "config.json").read_text())

    def broken(name: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        change(folder)
        return folder

    def imported(folder: Path) -> str:
        err = _error(capsys, ["import", str(folder), str(tmp_path / f"{folder.name}-run")])
        assert not (tmp_path / f"{folder.name}-run").exists()
        return err

    def write_config(**changes):
        return lambda f: (f / "config.json").write_text(json.dumps({**config, **changes}))

    def no_vocab_size(f: Path) -> None:
        (f / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "vocab_size"}))

    def truncated(f: Path) -> None:
        os.truncate(f / "model.safetensors", 1000)

    def sharded(shard: str):
        def change(f: Path) -> None:
            (f / "model.safetensors").rename(f / "model-00001-of-00001.safetensors")  # as HF names shards
            index = {"weight_map": {"transformer.wte.weight": shard}}
            (f / "model.safetensors.index.json").write_text(json.dumps(index))

        return change

    err = imported(broken("bad-json", lambda f: (f / "config.json").write_text("{not json")))
    assert "config.json: not valid JSON" in err
    assert "config.json: no 'vocab_size'" in imported(broken("no-vocab", no_vocab_size))
    assert "model_type='t5'" in imported(broken("t5", write_config(model_type="t5")))
    assert "unusable value" in imported(broken("bad-type", write_config(n_embd="wide")))
    assert "weights do not fit config.json (size mismatch" in imported(
        broken("shape", write_config(n_embd=32))
    )
    assert "model.safetensors: not a readable .safetensors" in imported(broken("truncated", truncated))
    for i, shard in enumerate(["../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"]):
        err = imported(broken(f"escape{i}", sharded(shard)))
        assert f"model.safetensors.index.json: shard {shard!r} is not a file inside" in err
    ok = broken("sharded", sharded("model-00001-of-00001.safetensors"))  # a name inside: imports
    assert main(["import", str(ok), str(tmp_path / "sharded-run")]) == 0

    def not_an_index(f: Path) -> None:
        sharded("model-00001-of-00001.safetensors")(f)
        (f / "model.safetensors.index.json").write_text("[]")

    err = imported(broken("bad-index", not_an_index))
    assert "model.safetensors.index.json: not a safetensors index" in err
    err = imported(broken("gone", sharded("model-00002-of-00002.safetensors")))
    assert "model-00002-of-00002.safetensors: missing" in err


def test_bytelevel_bpe_vocab_is_written_as_gpt2(tmp_path):
    """A byte-level BPE tokenizer.json (Hugging Face `tokenizers`) → tokenizer.ggml.model "gpt2"."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from scratchlm.formats.gguf import _add_bytelevel_vocab

    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(["Prince Andrew said that the war was over."] * 50, trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "gpt2")
    _add_bytelevel_vocab(w, tmp_path / "tokenizer.json")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    r = gguf.GGUFReader(tmp_path / "v.gguf")
    assert (_field(r, "tokenizer.ggml.model"), _field(r, "tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    tokens, types = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.token_type")
    vocab = tk.get_vocab()
    assert len(tokens) == len(vocab) and all(tokens[i] == t for t, i in vocab.items())
    assert types[vocab["<|eos|>"]] == gguf.TokenType.CONTROL and types[vocab["Ġ"]] == gguf.TokenType.NORMAL
    merges = _field(r, "tokenizer.ggml.merges")
    assert merges and all(len(m.split(" ")) == 2 for m in merges)
    first = merges[0].split(" ")
    assert tk.encode(first[0] + first[1]).ids == [vocab[first[0] + first[1]]]


def test_gguf_export_writes_an_ollama_modelfile_beside_it(prepared, tmp_path, capsys):
    """<stem>.Modelfile: FROM the .gguf beside it, the run's sample settings, <|end|> as a stop; an SFT run's
    chat layout as an Ollama (Go) template, a base run's plain prompt; a user's file of that name stays."""
    base = make_run(prepared, tmp_path / "base", kind="bpe", flavour="llama")
    sft = make_run(prepared, tmp_path / "sft", flavour="llama")
    cfg = Run.at(sft).load_config()
    cfg.sft.base = str(base)
    cfg.sample.temperature, cfg.sample.top_k = 0.5, 7
    Run.at(sft).save_config(cfg)
    export(base, "gguf", tmp_path / "base.gguf")
    export(sft, "gguf", tmp_path / "chat.gguf")
    plain = (tmp_path / "base.Modelfile").read_text().splitlines()
    chat = (tmp_path / "chat.Modelfile").read_text().splitlines()
    assert "FROM ./base.gguf" in plain and "FROM ./chat.gguf" in chat
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain  # llama.cpp adds the BOS itself for a bpe vocabulary
    # The Unigram vocabulary gets no automatic BOS in llama.cpp, so the template writes it, as render does.
    template = "<|bos|>{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"
    assert f'TEMPLATE """{template}"""' in chat
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    filled = "<|bos|>" + "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"
    tok = scratchlm.load(sft).tokenizer
    assert tok.encode(filled, allow_special=True) == render(messages, tok, add_generation_prompt=True).ids
    for lines, (temp, top_k) in ((plain, ("0.8", 50)), (chat, ("0.5", 7))):
        assert 'PARAMETER stop "<|end|>"' in lines and f"PARAMETER temperature {temp}" in lines
        assert f"PARAMETER top_k {top_k}" in lines and "PARAMETER num_ctx 128" in lines

    assert not any("qwen3" in line for line in plain + chat)
    # A QK-norm model is llama.cpp's qwen3, which Ollama tokenizes its own way: the file says so.
    qwen3 = make_run(prepared, tmp_path / "qwen3", kind="bpe", flavour="llama", qk_norm=True, bias=False)
    capsys.readouterr()
    export(qwen3, "gguf", tmp_path / "qwen3.gguf")
    assert "# Caution: Ollama runs qwen3 files" in (tmp_path / "qwen3.Modelfile").read_text()
    assert "for Ollama, train with --model.qk-norm false" in capsys.readouterr().err  # and the export says it

    (tmp_path / "chat.Modelfile").write_text("FROM mine\n")
    capsys.readouterr()
    export(sft, "gguf", tmp_path / "chat.gguf", force=True)
    assert (tmp_path / "chat.Modelfile").read_text() == "FROM mine\n"
    assert "chat.Modelfile exists and was not written by `scratchlm export`" in capsys.readouterr().err


def _llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp_llama()(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)]).copy()
    finally:
        llm.close()


# Measured on this random-weight model: mean |logit - f32 logit| / std(f32 logits) 0.043 for q8_0 (93% of
# argmaxes equal) and 0.32 for q4_k_m (43%: random weights leave near-ties everywhere); a file whose
# weights were scrambled would be ~1.1 (uncorrelated logits). So the bounds catch a broken quantization,
# not small drifts of quality, which bench/quantize.py is meant to measure on a trained model.
@pytest.mark.parametrize("dtype, rel_tol, agree_min", [("q8_0", 0.08, 0.85), ("q4_k_m", 0.5, 0.0)])
def test_quantized_gguf_loads_in_llama_cpp_close_to_f32(prepared, tmp_path, dtype, rel_tol, agree_min):
    """A 256-wide model, so that the K-quant (256-value blocks) applies to the attention matrices; the
    rest falls back per tensor, as llama.cpp chooses; the file is smaller and llama.cpp runs it."""
    llama_cpp_llama()  # first: q4_k_m's export itself needs llama.cpp's quantizer
    run = make_run(prepared, tmp_path / "run", flavour="llama", n_embd=256, n_head=4)
    export(run, "gguf", tmp_path / "f32.gguf")
    assert (
        main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "q.gguf"), "--dtype", dtype])
        == 0
    )
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    want = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_k_m": gguf.GGMLQuantizationType.Q4_K}[dtype]
    assert types["blk.0.attn_q.weight"] == want
    assert (tmp_path / "q.gguf").stat().st_size < (tmp_path / "f32.gguf").stat().st_size / 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "f32.Modelfile",
        "f32.gguf",
        "q.Modelfile",
        "q.gguf",
        "run",
    ]
    ids = prompt_ids(scratchlm.load(run), PROMPTS[0] + " the war was over and")
    ref, got = _llama_cpp_logits(tmp_path / "f32.gguf", ids), _llama_cpp_logits(tmp_path / "q.gguf", ids)
    diff = np.abs(got - ref)
    rel = diff.mean() / ref.std()
    agree = (got.argmax(1) == ref.argmax(1)).mean()
    assert rel < rel_tol and agree >= agree_min, (rel, agree)


def test_dtype_accepts_torch_style_names(prepared, tmp_path):
    run = make_run(prepared, tmp_path / "run", flavour="llama")
    assert (
        main(
            ["export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--dtype", "float16"]
        )
        == 0
    )
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    export(run, "hf", tmp_path / "hf", dtype="bfloat16")
    assert {t.dtype for t in load_file(str(tmp_path / "hf" / "model.safetensors")).values()} == {
        torch.bfloat16
    }
