"""The in-memory key map: scratchlm GPT ↔ transformers GPT2LMHeadModel / LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch

from scratchlm.common import UserError
from scratchlm.config import ModelConfig
from scratchlm.export.hf import from_hf_model, to_hf_model
from scratchlm.model import GPT

pytest.importorskip("transformers")

CASES = {
    "gpt2": dict(flavour="gpt2"),
    "gpt2-nobias-untied": dict(flavour="gpt2", bias=False, tie_embeddings=False),
    "llama-gqa-untied": dict(flavour="llama", bias=False, n_kv_head=2, tie_embeddings=False),
    "llama-bias-theta": dict(flavour="llama", bias=True, rope_theta=500.0, norm_eps=1e-6),
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
    assert type(hf).__name__ == ("GPT2LMHeadModel" if model.config.flavour == "gpt2" else "LlamaForCausalLM")
    idx = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        ours = model(idx)[0]
        theirs = hf(idx).logits
        back = from_hf_model(hf)(idx)[0]
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(back, ours, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kw, option",
    [
        (dict(flavour="llama", qk_norm=True), "qk_norm"),
        (dict(flavour="gpt2", qk_norm=True), "qk_norm"),
        (dict(flavour="gpt2", n_kv_head=2), "n_kv_head"),
    ],
)
def test_options_transformers_lacks_are_refused(kw, option):
    with pytest.raises(UserError, match=option):
        to_hf_model(random_model(**kw))
