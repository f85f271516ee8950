"""Decoding speed: scratchlm's KV-cache sampler vs transformers `generate`, same weights, one run.

    PYTHONPATH=src python bench/generate.py                 # gpt2 and llama flavours, CPU, batch 1
    PYTHONPATH=src python bench/generate.py --flavour llama --new-tokens 128 --repeats 5

Both sides decode greedily with a KV cache from the same 16-token prompt; the weights are random
(speed does not depend on them) and copied into GPT2LMHeadModel / LlamaForCausalLM. The first
tokens of both outputs are compared, which checks the weight copy. The ratios are what to read:
absolute tokens/s on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scratchlm.config import ModelConfig, SampleConfig
from scratchlm.model import GPT
from scratchlm.sample import generate_ids


def to_transformers(model: GPT):
    """The same weights in a transformers model (GPT2LMHeadModel or LlamaForCausalLM).

    Written here because the export key map (src/scratchlm/export/hf.py, issue 8) was not on a
    branch yet when this benchmark was written.
    """
    c = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hd = c.n_embd // c.n_head
    if c.flavour == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=c.padded_vocab_size,
                n_positions=c.block_size,
                n_embd=c.n_embd,
                n_layer=c.n_layer,
                n_head=c.n_head,
                n_inner=c.ffn_hidden,
                layer_norm_epsilon=c.norm_eps,
                activation_function="gelu_new",
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        )
        out = {}
        for k, v in sd.items():
            if k == "lm_head.weight":
                continue
            # HF GPT-2 uses Conv1D, whose weight is (in, out): transpose the linear weights.
            linear = k.endswith(".weight") and any(m in k for m in ("c_attn", "c_proj", "c_fc"))
            out[k] = v.t().contiguous() if linear else v
        missing, unexpected = hf.load_state_dict(out, strict=False)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=c.padded_vocab_size,
                hidden_size=c.n_embd,
                intermediate_size=c.ffn_hidden,
                num_hidden_layers=c.n_layer,
                num_attention_heads=c.n_head,
                num_key_value_heads=c.kv_heads,
                head_dim=hd,
                max_position_embeddings=c.block_size,
                rms_norm_eps=c.norm_eps,
                rope_theta=c.rope_theta,
                tie_word_embeddings=c.tie_embeddings,
                attention_bias=c.bias,
                mlp_bias=c.bias,
            )
        )
        out = {
            "model.embed_tokens.weight": sd["transformer.wte.weight"],
            "model.norm.weight": sd["transformer.ln_f.weight"],
        }
        if not c.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        for i in range(c.n_layer):
            p, q = f"transformer.h.{i}.", f"model.layers.{i}."
            wq, wk, wv = sd[p + "attn.c_attn.weight"].split([c.n_head * hd, c.kv_heads * hd, c.kv_heads * hd])
            out |= {
                q + "self_attn.q_proj.weight": wq,
                q + "self_attn.k_proj.weight": wk,
                q + "self_attn.v_proj.weight": wv,
                q + "self_attn.o_proj.weight": sd[p + "attn.c_proj.weight"],
                q + "mlp.gate_proj.weight": sd[p + "mlp.c_gate.weight"],
                q + "mlp.up_proj.weight": sd[p + "mlp.c_fc.weight"],
                q + "mlp.down_proj.weight": sd[p + "mlp.c_proj.weight"],
                q + "input_layernorm.weight": sd[p + "ln_1.weight"],
                q + "post_attention_layernorm.weight": sd[p + "ln_2.weight"],
            }
        missing, unexpected = hf.load_state_dict(out, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "masked_bias", "lm_head.weight"))]
    assert not missing and not unexpected, (missing, unexpected)
    return hf.eval()


def scratch_cached(model: GPT, prompt: list[int], n: int) -> list[int]:
    cfg = SampleConfig(max_new_tokens=n, temperature=0.0)
    return list(generate_ids(model, prompt, cfg))


@torch.inference_mode()
def scratch_uncached(model: GPT, prompt: list[int], n: int) -> list[int]:
    """A full forward over the whole (sliding) context per new token: what the cache saves."""
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.config.block_size :]]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


@torch.inference_mode()
def hf_generate(hf, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    y = hf.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    return y[0, len(prompt) :].tolist()


def timed(contenders: dict, repeats: int) -> dict:
    """Median seconds per contender. The contenders take turns within each repeat, so a change in
    the machine's load (it is shared) hits all of them alike; one warm-up call each first."""
    outputs = {name: fn() for name, fn in contenders.items()}
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), outputs[name]) for name in contenders}


def bench(flavour: str, args) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        flavour=flavour,
        vocab_size=args.vocab,
        block_size=args.block,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.width,
        bias=flavour == "gpt2",
    )
    model = GPT(cfg).eval()
    hf = to_transformers(model)
    prompt = torch.randint(0, args.vocab, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    results = timed(
        {
            "scratchlm (KV cache)": lambda: scratch_cached(model, prompt, n),
            "transformers generate (KV cache)": lambda: hf_generate(hf, prompt, n),
            "scratchlm (no cache)": lambda: scratch_uncached(model, prompt, n),
        },
        args.repeats,
    )
    ours = results["scratchlm (KV cache)"]
    theirs = results["transformers generate (KV cache)"][1]
    agree = next((i for i, (a, b) in enumerate(zip(ours[1], theirs, strict=True)) if a != b), n)
    print(
        f"\n{flavour}: {cfg.n_layer} layers, {cfg.n_embd} wide, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
        f"{model.num_params():,} parameters; batch 1, {len(prompt)}-token prompt, {n} new tokens, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"  greedy outputs agree on the first {agree}/{n} tokens")
    for name, (seconds, _) in results.items():
        print(f"  {name:34s} {n / seconds:8.0f} tokens/s   scratchlm (KV cache) is {seconds / ours[0]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavour", choices=["gpt2", "llama", "both"], default="both")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--block", type=int, default=512, help="context; > prompt + new tokens so nothing slides")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least noise when shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for flavour in ("gpt2", "llama") if args.flavour == "both" else (args.flavour,):
        bench(flavour, args)


if __name__ == "__main__":
    main()
