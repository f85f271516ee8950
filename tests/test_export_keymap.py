"""The in-memory key map: scratchlm GPT ↔ transformers GPT2LMHeadModel / LlamaForCausalLM /
Qwen3ForCausalLM."""

from __future__ import annotations

import pytest
import torch

from scratchlm.common import UserError
from scratchlm.config import ModelConfig
from scratchlm.formats.adapters import from_hf_model, to_hf_model
from scratchlm.model import GPT

pytest.importorskip("transformers")

CASES = {
    "gpt2": dict(flavour="gpt2"),  # exact GELU: transformers' "gelu"
    "gpt2-gelu_tanh": dict(flavour="gpt2", activation="gelu_tanh"),  # transformers' "gelu_new"
    "gpt2-nobias-untied": dict(flavour="gpt2", bias=False, tie_embeddings=False),
    "llama-gqa-untied": dict(flavour="llama", bias=False, n_kv_head=2, tie_embeddings=False),
    "llama-bias-theta": dict(flavour="llama", bias=True, rope_theta=500.0, norm_eps=1e-6),
    "qwen3-gqa": dict(flavour="llama", qk_norm=True, bias=False, n_kv_head=2, norm_eps=1e-6),
}


def random_model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=32, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # move every weight off its init (unit norms, zero biases) so each one matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers_and_back(case):
    model = random_model(**CASES[case])
    hf = to_hf_model(model)
    want_class = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    assert type(hf).__name__ == want_class[case.split("-")[0]]
    idx = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        ours = model(idx)[0]
        theirs = hf(idx).logits
        back = from_hf_model(hf)(idx)[0]
    assert theirs.shape == ours.shape
    if model.config.flavour == "gpt2":
        want = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[model.config.activation]
        assert hf.config.activation_function == want
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(back, ours, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kw, option",
    [
        (dict(flavour="llama", qk_norm=True, bias=True), "bias false"),
        (dict(flavour="gpt2", qk_norm=True), "qk_norm"),
        (dict(flavour="gpt2", n_kv_head=2), "n_kv_head"),
    ],
)
def test_options_transformers_lacks_are_refused(kw, option):
    with pytest.raises(UserError, match=option):
        to_hf_model(random_model(**kw))


def test_the_two_gelus_differ_enough_for_the_parity_test_to_tell_them_apart():
    """The parity test above holds within 1e-4: a GELU mapped to the wrong one lands outside it."""
    model = random_model(flavour="gpt2")
    hf = to_hf_model(model)
    hf.config.activation_function = "gelu_new"
    from transformers import GPT2LMHeadModel

    wrong = GPT2LMHeadModel(hf.config).eval()
    wrong.load_state_dict(hf.state_dict())
    idx = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (wrong(idx).logits - model(idx)[0]).abs().max() > 2e-4  # measured: 3.7e-4


@pytest.mark.parametrize(
    ("act", "ours"), [("gelu", "gelu"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh")]
)
def test_import_maps_gpt2_activations(act, ours):
    from scratchlm.formats.adapters import model_config_from_hf

    d = {"model_type": "gpt2", "vocab_size": 10, "activation_function": act}
    assert model_config_from_hf(d).activation == ours
    assert model_config_from_hf({"model_type": "gpt2", "vocab_size": 10}).activation == "gelu_tanh"


def test_import_refuses_other_gpt2_activations():
    from scratchlm.formats.adapters import model_config_from_hf

    d = {"model_type": "gpt2", "vocab_size": 10, "activation_function": "relu"}
    with pytest.raises(UserError, match="activation_function='relu'.*gelu, gelu_new, gelu_pytorch_tanh"):
        model_config_from_hf(d)
