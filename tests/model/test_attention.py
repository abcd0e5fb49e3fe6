"""`sdpa_packed` (apr.model.attention): packed rows attended sequence by sequence, same values as `sdpa`."""

from __future__ import annotations

import json

import pytest
import torch

from apr.model import attention
from apr.model.config import ModelConfig, build_model

VOCAB = 90


def _models(**overrides):
    """The same weights under `sdpa` and `sdpa_packed`."""
    cfg = dict(name="test", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
               max_position_embeddings=512, init_std=0.3, **overrides)
    return [build_model(ModelConfig(**cfg, attn_implementation=a), vocab_size=VOCAB, seed=4).train()
            for a in ("sdpa", "sdpa_packed")]


def _packed_positions(row_lengths: list[list[int]], row_len: int) -> torch.Tensor:
    """position_ids restarting at each sequence; the rest of a row is padding counting from 0."""
    pos = torch.zeros(len(row_lengths), row_len, dtype=torch.long)  # (B, T)
    for b, lengths in enumerate(row_lengths):
        t = 0
        for n in lengths:
            pos[b, t:t + n] = torch.arange(n)
            t += n
        pos[b, t:] = torch.arange(row_len - t)
    return pos


def _loss_and_grads(model, ids, pos, labels):
    out = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False)
    return out.logits, out.loss, torch.autograd.grad(out.loss, list(model.parameters()))


# lengths straddling the padding granule (31, 32, 33), a one-token sequence, a full row, padding tails
ROWS = [[200, 33, 31, 1, 60], [96, 96, 32], [128], [5, 3, 64, 33]]


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_packed_rows_give_sdpa_logits_loss_and_gradients(kv_heads):
    # float64: the same sums in another order agree to ~1e-16, so any real difference would show
    sdpa, packed = (m.double() for m in _models(num_kv_heads=kv_heads))
    pos = _packed_positions(ROWS, 400)
    ids = torch.randint(4, VOCAB, pos.shape, generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    a_logits, a_loss, a_grads = _loss_and_grads(sdpa, ids, pos, labels)
    b_logits, b_loss, b_grads = _loss_and_grads(packed, ids, pos, labels)
    torch.testing.assert_close(b_logits, a_logits, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b_loss, a_loss, atol=1e-12, rtol=1e-12)
    for a, b in zip(a_grads, b_grads):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-9)
    # the comparison has teeth: attending across the sequences of a row changes the logits
    leaky = sdpa(input_ids=ids, use_cache=False).logits
    assert (leaky - a_logits).abs().max().item() > 1e-2


def test_plan_buckets_every_token_once_and_pads_to_the_granule():
    pos = _packed_positions(ROWS, 400)
    sizes, into, back = attention._plan(pos, *pos.shape)
    n = pos.numel()
    assert sum(k * size for k, size in sizes) == len(into)
    assert all(size % attention.GRANULE == 0 for _, size in sizes)
    real = into[into < n]
    assert sorted(real.tolist()) == list(range(n))  # each token in exactly one slot
    assert torch.equal(into[back], torch.arange(n))  # `back` finds each token's slot
    # one slot layout per sequence: 200 -> 224, 33 -> 64, 31 -> 32, 1 -> 32, ...
    assert {size: k for k, size in sizes}[224] == 1


def test_rows_without_restarts_and_padded_batches_with_a_mask_run_as_sdpa():
    sdpa, packed = _models()
    ids = torch.randint(4, VOCAB, (3, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # one sequence per row: plain causal attention
        torch.testing.assert_close(packed(input_ids=ids, use_cache=False).logits,
                                   sdpa(input_ids=ids, use_cache=False).logits, atol=2e-5, rtol=1e-4)
        # left padding with a 2D mask: transformers' sdpa path, mask and all
        mask = torch.ones_like(ids)
        mask[0, :7] = 0
        mask[2, :20] = 0
        a = sdpa(input_ids=ids, attention_mask=mask, use_cache=False).logits
        b = packed(input_ids=ids, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=2e-5, rtol=1e-4)
        # decoding with a cache (generate) matches too
        x = ids[:1, :10]
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(packed.eval().generate(x, attention_mask=torch.ones_like(x), **kw),
                           sdpa.eval().generate(x, attention_mask=torch.ones_like(x), **kw))


def test_a_checkpoint_trained_with_it_loads_without_the_project(tmp_path):
    from transformers import AutoModelForCausalLM

    _, packed = _models()
    packed.save_pretrained(tmp_path)
    assert "sdpa_packed" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    pos = _packed_positions(ROWS[:2], 400)
    ids = torch.randint(4, VOCAB, pos.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, position_ids=pos, use_cache=False).logits,
                                   packed(input_ids=ids, position_ids=pos, use_cache=False).logits,
                                   atol=2e-5, rtol=1e-4)


def test_unknown_attention_implementation_is_refused_naming_the_field():
    from apr.config import ConfigError

    with pytest.raises(ConfigError, match="model.attn_implementation.*sdpa_packed"):
        ModelConfig(attn_implementation="packed")
