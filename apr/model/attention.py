"""`sdpa_packed`: attention for packed rows that computes only the pairs inside each sequence.

A packed row (`apr.sft.packing`) holds several whole sequences, `position_ids` restarting at 0 at
each. transformers' `sdpa` turns that into a block-diagonal causal mask over the whole row and
computes every (query, key) pair of it, then masks most of them away: a 512-token row of one root
thread (~220 tokens) and four children (~70) needs about an eighth of the scores it computes.

This implementation cuts the batch into its sequences instead, pads each up to a multiple of
`GRANULE` tokens, and runs one causal SDPA per length bucket (all sequences of that padded length
at once), then puts every token's output back in its row. Padding sits after a sequence's last
token, so a causal query never sees it. Same values as `sdpa` up to float rounding
(`tests/model/test_attention.py`); the linear layers are unchanged.

It applies to calls whose `position_ids` restart inside a row and that have no 2D attention mask
and no cache (packed training and scoring); everything else (padded batches with a mask, decoding
with a cache) runs transformers' `sdpa` unchanged. `apr.model.build_model` / `load_checkpoint` register
it when asked for `attn_implementation="sdpa_packed"`; a checkpoint's config.json does not record the
attention implementation, so any transformers install loads what was trained with it.
"""

from __future__ import annotations

import functools

NAME = "sdpa_packed"
GRANULE = 32  # sequences are padded up to a multiple of this many tokens (fewer SDPA calls, little waste)

_plan_cache: list = [None, None]  # (position_ids tensor, plan): one forward's layers share a plan


def register() -> None:
    """Make `attn_implementation="sdpa_packed"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME in AttentionMaskInterface._global_mapping:
        return

    def mask(*args, attention_mask=None, **kwargs):
        # no 2D mask: the attention works from position_ids (packed) or is plainly causal, no 4D mask
        # needed; with one (padded batches): the sdpa mask, which the attention then hands to sdpa
        if attention_mask is None:
            return None
        return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    AttentionInterface.register(NAME, packed_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, mask)


def _plan(position_ids, batch: int, length: int):
    """How the flattened (batch * length) tokens go into length buckets, or None when no row restarts
    (one sequence per row). A plan is (sizes, into, back): bucket b holds sizes[b] = (k, L), k sequences
    padded to L tokens; `into` (sum k*L,) lists, bucket after bucket, the flat token at each bucket slot
    (batch * length for padding); `back` (batch * length,) gives each token's slot."""
    import torch

    cached, plan = _plan_cache
    if cached is position_ids:
        return plan
    pos = position_ids.expand(batch, length).reshape(-1)  # (N,) N = B*T
    starts = (pos == 0).nonzero().squeeze(1)  # (S,) every row starts at position 0
    if len(starts) == batch:  # one sequence per row: plain causal attention over the row
        plan = None
    else:
        n_tokens, device = batch * length, pos.device
        ends = torch.cat([starts[1:], torch.tensor([n_tokens], device=device)])
        lens = torch.minimum(ends, (starts // length + 1) * length) - starts  # (S,)
        padded = (lens + GRANULE - 1) // GRANULE * GRANULE
        sizes, into = [], []
        for size in torch.unique(padded).tolist():
            sel = (padded == size).nonzero().squeeze(1)
            s, n = starts[sel], lens[sel]  # (k,)
            steps = torch.arange(size, device=device)  # (L,)
            slots = torch.where(steps[None, :] < n[:, None], s[:, None] + steps[None, :], n_tokens)  # (k, L)
            sizes.append((len(sel), size))
            into.append(slots.reshape(-1))
        into = torch.cat(into)
        back = torch.empty(n_tokens, dtype=torch.long, device=device)
        real = into < n_tokens
        back[into[real]] = real.nonzero().squeeze(1)
        plan = (sizes, into, back)
    _plan_cache[:] = [position_ids, plan]
    return plan


@functools.cache
def _gather_function():
    """The `Gather` autograd function (built on first use: importing this module does not import torch)."""
    import torch

    class Gather(torch.autograd.Function):
        """y = x[index] with a zero row for index == len(x); its gradient is the transposed gather
        grad_y[inverse] (zero row likewise). With `index` and `inverse` each other's inverse on the
        real rows, both directions are plain gathers: no scatter with accumulation."""

        @staticmethod
        def forward(ctx, x, index, inverse):
            ctx.save_for_backward(inverse, index)
            return _padded(x)[index]

        @staticmethod
        def backward(ctx, grad):
            inverse, index = ctx.saved_tensors
            return _padded(grad)[inverse], None, None

    return Gather


def _padded(x):
    import torch

    return torch.cat([x, x.new_zeros((1, *x.shape[1:]))])


def _gather(x, index, inverse):
    return _gather_function().apply(x, index, inverse)


def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers attention interface: (B, H, T, D) query/key/value -> ((B, T, H, D) output, None)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    batch, heads, length, dim = query.shape
    if (attention_mask is not None or position_ids is None or key.shape[2] != length
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    plan = _plan(position_ids, batch, length)
    if plan is None:
        out = sdpa(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    sizes, into, back = plan
    qkv = torch.cat([query, key, value], dim=1).transpose(1, 2).reshape(batch * length, 3 * heads, dim)
    slots = _gather(qkv, into, back)  # (sum k*L, 3H, D)
    outs, at = [], 0
    for k, size in sizes:
        part = slots[at:at + k * size].view(k, size, 3 * heads, dim).transpose(1, 2)  # (k, 3H, L, D)
        at += k * size
        q, kk, v = part.split(heads, dim=1)
        outs.append(sdpa(q, kk, v, dropout_p=dropout, is_causal=True, scale=scaling).transpose(1, 2)
                    .reshape(k * size, heads, dim))
    out = _gather(torch.cat(outs), back, into)  # (B*T, H, D) in token order
    return out.view(batch, length, heads, dim), None
