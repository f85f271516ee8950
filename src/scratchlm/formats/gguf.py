"""GGUF for llama.cpp, written with the `gguf` package.

Tensor names come from gguf's own map of transformers names (gguf.get_tensor_name_map), fed with the
names of our Hugging Face key map, so they stay what llama.cpp's own converter writes. Two details of
llama.cpp's converter matter and are copied here, proven by the llama-cpp-python parity test:
- Llama Q and K rows are permuted from transformers' rotate-half RoPE layout to the interleaved pairs
  llama.cpp's "normal" RoPE rotates.
- 1-D tensors (norms, biases) stay f32 at every --dtype; q8_0 applies to matrices whose rows are a
  multiple of 32 and falls back to f16 otherwise.
Vocabulary, chosen so that a prompt typed into llama.cpp gets scratchlm's ids (proven by the llama-cpp-python
parity tests): a SentencePiece BPE run becomes tokenizer.ggml.model "llama" (pieces, scores, token types), a
Unigram run "plamo2" (see _add_unigram_vocab), a byte-level BPE run "gpt2" with its merges and the GPT-2
pre-tokenizer, a char run "llama" too (see _add_char_vocab). One known difference of the "llama" type: it
reads a typed "▁" (U+2581) as a space, where scratchlm encodes it as its three byte tokens.
Chat: tokenizer.chat_template is chat_template.jinja_template(), and <|end|> is the end-of-turn token (eot),
so llama.cpp's chat stops after a reply; <|eos|> stays the end of a document. Special tokens are CONTROL
tokens, which llama.cpp matches in text only with parse_special: typed "<|end|>" stays text in a plain prompt,
as in scratchlm, but its chat path parses the whole rendered template, so there it ends the turn (the rule and
this exception: chat_template.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from .. import chat_template
from ..common import UserError
from ..tokenizer.sentencepiece import _SCORE_GRID
from .adapters import check_exportable, start_id, to_hf_state_dict

_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# llama.cpp's gpt2 graph has one GELU, the tanh approximation, and GGUF no key to choose another. An
# exact-GELU model is exported anyway, with a note: on the Tiny Shakespeare recipe's model (f32, 40 val
# windows) llama.cpp's logits differ from scratchlm's by 1.5e-3 on average (1.5e-2 at most) and the loss
# by 3e-5 nats, where llama.cpp's own kernels already differ by 0.8e-3 (1.1e-2) from the same function in
# torch; greedy tokens agreed. Refusing would cost every default gpt2 run its GGUF for that.
GELU_NOTE = (
    "note: llama.cpp computes GELU with the tanh approximation, this model exact GELU (--model.activation "
    "gelu): its logits there move by ~1e-3 (measured; loss by ~3e-5 nats); train with --model.activation "
    "gelu_tanh for llama.cpp's function"
)


def _permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half halves [x0..x(d/2-1) | x(d/2)..] → interleaved pairs (x0, x(d/2)), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_ARCH = {
    "gpt2": lambda g: g.MODEL_ARCH.GPT2,
    "llama": lambda g: g.MODEL_ARCH.LLAMA,
    "qwen3": lambda g: g.MODEL_ARCH.QWEN3,
}


def gguf_arch(cfg) -> str:
    """llama.cpp's architecture name for this model: the llama flavour with QK-norm is its qwen3 (per-head
    attn_q_norm / attn_k_norm before RoPE; no bias tensors, which export_blocker keeps away)."""
    if cfg.flavour == "llama" and cfg.qk_norm:
        return "qwen3"
    return cfg.flavour


def gguf_tensors(model_sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """scratchlm state dict → {gguf tensor name: tensor in torch (out, in) layout}."""
    import gguf

    check_exportable(cfg)
    names = gguf.get_tensor_name_map(_ARCH[gguf_arch(cfg)](gguf), cfg.n_layer)
    # llama.cpp's llama graph rotates interleaved pairs; its qwen3 graph rotates halves (NEOX) as we do, so
    # Qwen3's q and k stay as they are, as llama.cpp's own converter leaves them.
    permute = cfg.flavour == "llama" and not cfg.qk_norm
    out = {}
    for key, t in to_hf_state_dict(model_sd, cfg).items():
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        if cfg.flavour == "gpt2" and key.endswith(_GPT2_CONV1D):
            t = t.t()  # back from Conv1D (in, out) to (out, in), as llama.cpp's converter does
        if permute and ".self_attn.q_proj." in key:
            t = _permute_rope(t, cfg.n_head)
        if permute and ".self_attn.k_proj." in key:
            t = _permute_rope(t, cfg.kv_heads)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"no GGUF name for {key}")
        out[name] = t.detach().float().contiguous()
    return out


def _encode(t: torch.Tensor, dtype: str):
    """The array and its GGML type for one tensor under --dtype."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    a = t.numpy()
    if a.ndim == 1 or dtype == "f32":
        return a.astype(np.float32), Q.F32
    if dtype == "q8_0" and a.shape[-1] % 32 == 0:
        return quants.quantize(a, Q.Q8_0), Q.Q8_0
    return a.astype(np.float16), Q.F16


def write_gguf(lm, tok_dir: Path, path: Path, dtype: str = "f32", name: str = "scratchlm") -> None:
    import gguf

    cfg = lm.config.model
    tensors = gguf_tensors({k: v.cpu() for k, v in lm.model.state_dict().items()}, cfg)
    w = gguf.GGUFWriter(str(path), gguf_arch(cfg))
    w.add_name(name)
    w.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[dtype]
    )
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if cfg.flavour == "gpt2" and cfg.activation == "gelu":
        print(GELU_NOTE, file=sys.stderr)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_head_count(cfg.n_head)
    if cfg.flavour == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
    else:
        w.add_head_count_kv(cfg.kv_heads)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_vocab_size(cfg.vocab_size)
    _add_vocab(w, tok_dir, lm.tokenizer)
    w.add_chat_template(chat_template.jinja_template())
    for tname, t in tensors.items():
        array, qtype = _encode(t, dtype)
        w.add_tensor(tname, array, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- 4-bit
def llama_cpp_quantizer():
    """llama.cpp's own quantizer (K-quants need its importance mixes, which the gguf package lacks)."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "--dtype q4_k_m: needs llama.cpp's quantizer: pip install 'scratchlm[gguf-check]' "
            "(llama-cpp-python), or export --dtype q8_0"
        ) from None
    return llama_cpp


def quantize_gguf(src: Path, dst: Path, dtype: str) -> None:
    """An f16 GGUF → Q4_K_M with llama.cpp's quantizer. Matrices whose rows are not a multiple of 256 (the
    K-quant block) fall back, per tensor, to a type llama.cpp picks (q5_0/q8_0 for a 64-wide model)."""
    import ctypes

    llama_cpp = llama_cpp_quantizer()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[dtype]
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {dtype}")


# ---------------------------------------------------------------- vocabulary
def write_vocab_gguf(tokenizer, tok_dir: Path, path: Path) -> None:
    """A GGUF holding only a tokenizer's vocabulary (and the few hyperparameters llama.cpp reads before
    it): what `Llama(model_path, vocab_only=True)` needs to tokenize as the exported model would."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for add in (w.add_context_length, w.add_embedding_length, w.add_feed_forward_length):
        add(64)
    w.add_block_count(1)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    _add_vocab(w, Path(tok_dir), tokenizer)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def _add_vocab(w, tok_dir: Path, tokenizer) -> None:
    if tokenizer.kind in ("unigram", "bpe"):
        _add_sentencepiece_vocab(w, tok_dir / "tokenizer.model")
    elif tokenizer.kind == "bytelevel":
        _add_bytelevel_vocab(w, tok_dir / "tokenizer.json")
    elif tokenizer.kind == "char":
        _add_char_vocab(w, tok_dir / "tokenizer.json")
    else:
        raise UserError(
            f"{tok_dir}: a {tokenizer.kind} tokenizer has no llama.cpp equivalent; GGUF export needs a "
            "unigram, bpe, bytelevel or char tokenizer (--tokenizer.kind)"
        )
    if tokenizer.meta.get("normalization") == "nfkc":
        print(
            "note: this tokenizer NFKC-normalizes text and llama.cpp does not: prompts that NFKC changes "
            "(full-width letters, ligatures...) tokenize differently in llama.cpp",
            file=sys.stderr,
        )
    # llama.cpp puts the BOS token before every prompt (not with the "plamo2" vocabulary: see
    # _add_unigram_vocab): declaring scratchlm's start token as BOS makes `llama-cli -p TEXT` see what
    # `scratchlm sample RUN TEXT` feeds the model.
    w.add_bos_token_id(start_id(tokenizer))
    w.add_eos_token_id(tokenizer.eos_id)
    # <|end|>: llama.cpp stops generating at eot as at eos, so a chat reply ends where scratchlm's does.
    w.add_eot_token_id(chat_template.stop_ids(tokenizer)[0])
    w.add_pad_token_id(tokenizer.pad_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _add_sentencepiece_vocab(w, path: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    unk = [i for i, p in enumerate(proto.pieces) if p.type == pb.ModelProto.SentencePiece.UNKNOWN]
    if unk:
        w.add_unk_token_id(unk[0])
    if proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM:
        _add_unigram_vocab(w, proto)
        return
    # SentencePiece's piece types (NORMAL=1 … BYTE=6) are GGUF's token types, value for value.
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([int(p.type) for p in proto.pieces])
    # scratchlm trains without a dummy prefix: llama.cpp must not prepend "▁" to the text either.
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)


# llama.cpp's PLaMo-2 tokenizer keeps round(score * 1e4) as an integer. Unigram scores are multiples of
# 1/_SCORE_GRID (tokenizer/sentencepiece.py), so scores are written times _SCORE_GRID/1e4: every score and
# every sum stays exact, where the plain scores would round and shift ties.
_PLAMO2_SCALE = _SCORE_GRID / 1e4


def _add_unigram_vocab(w, proto) -> None:
    """A SentencePiece Unigram vocabulary as llama.cpp's "plamo2" tokenizer: the same Viterbi search over
    the piece scores, with byte fallback for characters the vocabulary lacks.

    Why not llama.cpp's other types (typed lines whose ids differ from scratchlm's, measured with 4,096-piece
    tokenizers of War and Peace, alone or with Soseki's "I Am a Cat"): "llama" merges greedily (13 tokens
    for a 4-token prompt); "t5" (UGM) searches as SentencePiece does but has no byte fallback, so every
    character outside the vocabulary becomes <unk>: 2% of English lines, 99.7% of Japanese lines (31% with
    Soseki in the tokenizer). "plamo2" differs only where two segmentations score exactly the same:
    SentencePiece keeps the longest last piece, PLaMo-2 the longest first ("r|est" vs "re|st"). Scores on the
    fine grid of tokenizer/sentencepiece._SCORE_GRID make such ties rare enough that none of ~7,000 held-out
    lines differs (bench/tokenize_parity.py); permutations of the same pieces ("    " as "▁|▁▁▁" or "▁▁▁|▁")
    still tie, as no choice of scores can separate them. A tokenizer trained on the older 1/32 grid still
    gets other ids on ~1% of lines: train it again to be rid of them.

    PLaMo-2 reads pieces as plain text (a space, not "▁"), byte tokens as <0xXX> of type BYTE, and gives
    every other token its score: control and unknown tokens get -inf, which it skips, so typed text such
    as "<|end|>" stays text, as in scratchlm.

    One cost: llama.cpp's PLaMo-2 tokenizer never adds the BOS token (llama_tokenize's add_special does
    nothing there). Chat templates write <|bos|> themselves; a plain completion prompt must start with
    the <|bos|> token too (the text "<|bos|>" where special tokens are parsed) to match `scratchlm sample`.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    from ..tokenizer.sentencepiece import WS

    piece_type = pb.ModelProto.SentencePiece
    tokens, scores, types = [], [], []
    for p in proto.pieces:
        special = p.type in (piece_type.CONTROL, piece_type.UNKNOWN)
        tokens.append(p.piece.replace(WS, " ") if p.type != piece_type.BYTE and not special else p.piece)
        scores.append(float("-inf") if special else p.score * _PLAMO2_SCALE)
        types.append(int(p.type))  # SentencePiece's piece types are GGUF's token types, value for value
    if proto.normalizer_spec.add_dummy_prefix or proto.normalizer_spec.remove_extra_whitespaces:
        raise UserError(
            "this SentencePiece model adds a dummy prefix or folds whitespace, which llama.cpp's PLaMo-2 "
            "tokenizer cannot; train the tokenizer again with scratchlm"
        )
    w.add_tokenizer_model("plamo2")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)


def _add_bytelevel_vocab(w, path: Path) -> None:
    import gguf

    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tj.get("pre_tokenizer")):
        raise UserError(
            f"{path}: GGUF export supports SentencePiece and byte-level BPE tokenizers, not this one "
            f"({model.get('type')})"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for t in added.values():
        vocab.setdefault(t["content"], t["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        if tok in added:
            types[i] = gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED
        else:
            types[i] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # llama.cpp's name for the GPT-2 regex ("gpt2" is refused)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)


def _add_char_vocab(w, path: Path) -> None:
    """A char tokenizer (one token per known character, UTF-8 byte tokens <0xXX> for the rest) as a
    llama.cpp "llama" vocabulary. llama.cpp's SentencePiece-style tokenizer splits text into characters,
    merges two neighbours only when their join is in the vocabulary (a char vocabulary has no
    two-character entry, so nothing merges), and spells unknown characters as byte tokens: the same ids,
    proven by the llama.cpp parity test. It reads a space as "▁", so the space token is written so."""
    import gguf

    from ..tokenizer import BYTE_TOKENS

    tj = json.loads(path.read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    special = {t["content"] for t in tj.get("added_tokens", []) if t.get("special")}
    tokens = [""] * (max(vocab.values()) + 1)
    types = [gguf.TokenType.UNUSED] * len(tokens)
    byte_tokens = set(BYTE_TOKENS)
    for tok, i in vocab.items():
        tokens[i] = "\u2581" if tok == " " else tok
        types[i] = (
            gguf.TokenType.CONTROL
            if tok in special
            else gguf.TokenType.BYTE
            if tok in byte_tokens
            else gguf.TokenType.NORMAL
        )
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))  # only merges use scores, and a char vocabulary has none
    w.add_token_types(types)
    w.add_add_space_prefix(False)


# ---------------------------------------------------------------- Ollama
MODELFILE_MARKER = "# Written by `scratchlm export`"


# Read in Ollama's source, not run: it sends "qwen3" files to its own engine (OllamaEngineRequired), whose
# qwen3 model tokenizes with byte-level BPE and Qwen's split rule whatever tokenizer the file declares.
QWEN3_OLLAMA_NOTE = [
    "# Caution: Ollama runs qwen3 files (QK-norm models) on its own engine, which tokenizes them",
    "# as byte-level BPE whatever the file declares, so it may not see scratchlm's tokens; models",
    "# trained with --model.qk-norm false go through llama.cpp. See scratchlm's docs/deploy.md, Ollama.",
]


def modelfile(lm, gguf_name: str, sft: bool, sample) -> str:
    """An Ollama Modelfile for the .gguf beside it: the run's chat layout for an SFT run (Ollama writes
    templates in Go's syntax, not Jinja), the plain prompt for a base run, and the run's sample settings.
    llama.cpp's PLaMo-2 vocabulary (Unigram runs) adds no BOS token, so there the template writes it."""
    s = sample  # the run's config.yaml, as `scratchlm sample RUN` reads it
    bos = "<|bos|>" if lm.tokenizer.kind == "unigram" else ""
    if sft:
        template = bos + "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"
    else:
        template = bos + "{{ .Prompt }}"
    lines = [f"{MODELFILE_MARKER}; `ollama create NAME -f THIS_FILE` loads it."]
    if gguf_arch(lm.config.model) == "qwen3":
        lines += QWEN3_OLLAMA_NOTE
    lines += [
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        'PARAMETER stop "<|end|>"',
        'PARAMETER stop "<|eos|>"',
        f"PARAMETER temperature {s.temperature:g}",
        f"PARAMETER top_k {s.top_k}",
        f"PARAMETER top_p {s.top_p:g}",
        f"PARAMETER num_ctx {lm.config.model.block_size}",
    ]
    return "\n".join(lines) + "\n"
