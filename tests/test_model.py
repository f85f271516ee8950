"""The GPT: shapes, both flavours, causality, the KV cache, vocab padding, presets' sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scratchlm.config import PRESETS, ModelConfig
from scratchlm.model import GPT, KVCache

FLAVOURS = {
    "gpt2": ModelConfig(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_embd=32),
    "llama": ModelConfig(
        flavour="llama",
        vocab_size=101,
        block_size=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        bias=False,
        qk_norm=True,
        tie_embeddings=False,
    ),
}


@pytest.fixture(params=list(FLAVOURS))
def model(request):
    torch.manual_seed(0)
    return GPT(dataclasses.replace(FLAVOURS[request.param])).eval()


def test_logits_shape_excludes_vocab_padding(model):
    assert model.config.padded_vocab_size == 128
    assert model.transformer.wte.weight.shape[0] == 128
    logits, loss = model(torch.randint(0, 101, (3, 10)), torch.randint(0, 101, (3, 10)))
    assert logits.shape == (3, 10, 101)
    assert abs(loss.item() - torch.log(torch.tensor(101.0)).item()) < 0.5  # small init: near uniform


def test_future_tokens_do_not_change_past_logits(model):
    x = torch.randint(0, 101, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 101
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_kv_cache_gives_the_same_logits_as_a_full_forward(model):
    x = torch.randint(0, 101, (2, 20))
    full, _ = model(x)
    cache = KVCache.empty(model.config, 2, 32, "cpu", torch.float32)
    first, _ = model(x[:, :7], cache=cache)  # a prefill of several tokens
    steps = [model(x[:, t : t + 1], cache=cache)[0] for t in range(7, 12)]  # one at a time
    rest, _ = model(x[:, 12:], cache=cache)  # another chunk after cached tokens
    torch.testing.assert_close(torch.cat([first, *steps, rest], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 20


def test_sequence_longer_than_context_is_refused(model):
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_residual_projections_have_scaled_init():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=64, n_layer=8, n_head=4, n_embd=256))
    std_proj = m.transformer.h[0].mlp.c_proj.weight.std().item()
    std_fc = m.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / 4) < 0.001  # 1/sqrt(2 x 8 layers)


def test_tied_head_shares_the_embedding():
    m = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=32))
    assert m.lm_head.weight is m.transformer.wte.weight


@pytest.mark.parametrize(
    ("preset", "vocab", "low", "high"),
    [("tiny", 4096, 0.8e6, 1.6e6), ("small", 4096, 9e6, 13e6), ("gpt2", 50257, 123e6, 126e6)],
)
def test_presets_have_the_advertised_size(preset, vocab, low, high):
    cfg = ModelConfig(vocab_size=vocab, **PRESETS[preset]["model"])
    with torch.device("meta"):
        n = GPT(cfg).num_params()
    assert low < n < high


@pytest.mark.parametrize(
    "cfg",
    [ModelConfig(vocab_size=50257, **PRESETS["gpt2"]["model"]), FLAVOURS["llama"]],
    ids=["gpt2-124M-tied-head", "llama-gqa-qknorm-untied-head"],
)
def test_flops_per_token_matches_torch_flop_counter(cfg):
    """The estimate behind MFU equals the matmul FLOPs torch counts for a forward + backward of one full
    context (on the meta device: no compute), the tied head included."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = GPT(cfg)
        idx = torch.zeros(1, cfg.block_size, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss = model(idx, idx)
        loss.backward()
    assert model.flops_per_token() == counter.get_total_flops() / cfg.block_size


def test_gqa_needs_divisible_heads():
    from scratchlm.common import UserError

    with pytest.raises(UserError, match="n_kv_head"):
        GPT(ModelConfig(flavour="llama", n_head=4, n_kv_head=3, n_embd=32))


@pytest.mark.parametrize(("activation", "reference"), [("gelu", "none"), ("gelu_tanh", "tanh")])
def test_gpt2_mlp_uses_the_chosen_gelu(activation, reference):
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=32, activation=activation))
    mlp, x = m.transformer.h[0].mlp, torch.randn(2, 5, 32) * 3
    for approximate in ("none", "tanh"):
        want = mlp.c_proj(torch.nn.functional.gelu(mlp.c_fc(x), approximate=approximate))
        assert torch.equal(mlp(x), want) == (approximate == reference)


def test_llama_refuses_a_gelu_choice():
    from scratchlm.common import UserError

    with pytest.raises(UserError, match="--model.activation gelu_tanh applies to the gpt2 flavour only"):
        GPT(ModelConfig(flavour="llama", n_head=4, n_embd=32, activation="gelu_tanh"))


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_dropout_is_active_in_training_only_and_free_at_zero(flavour):
    x = torch.randint(0, 101, (2, 12))
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(FLAVOURS[flavour], dropout=p))
        trained, _ = model.train()(x)
        evaluated, _ = model.eval()(x)
        assert torch.equal(trained, evaluated) == (p == 0.0)
        assert any(isinstance(m, torch.nn.Dropout) for m in model.modules()) == (p > 0)


def test_qk_norm_under_bf16_autocast_keeps_the_fused_kernel():
    """Under bf16 autocast q and k are bf16: float32 gains would send rms_norm to its slow unfused path
    (with a warning); the result matches float32 to bf16 precision."""
    import warnings

    cfg = ModelConfig(
        flavour="llama", qk_norm=True, vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32
    )
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, 64, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = model(x)
    full, _ = model(x)
    assert (low.float() - full).abs().max() < 0.1
