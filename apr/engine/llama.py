"""Owns the model forward: a functional Llama over the HF model's own parameters and the KV pool.

It reads `LlamaForCausalLM`'s tensors by reference (embedding, q/k/v/o, RMSNorm, MLP,
lm_head), so in-place weight updates (an optimizer step, `load_state_dict`) are seen at the
next step with no copy; after *replacing* parameter objects call `refresh_weights()`. Numerics follow `modeling_llama` op for op (fp32 RMSNorm, RoPE with
`rotate_half`, SDPA), which is what makes greedy decoding token-identical to `generate`.

    >>> runner = LlamaRunner(model, kv)                          # doctest: +SKIP
    >>> logits = runner.forward(batch)                           # doctest: +SKIP  (B, V)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from apr.engine.kv_cache import KVCache


@dataclass
class ForwardBatch:
    """Inputs of one forward over cache rows `[row_start, row_start + B)`, T new positions per row.

    Rows with fewer than T new tokens are right-padded; padded positions write no KV and
    their outputs are discarded. Decode steps have T == 1 and no padding.
    """

    input_ids: torch.Tensor  # (B, T) long
    positions: torch.Tensor  # (B, T) long: absolute position of each new token (padding: 0)
    row_start: int
    kv_len: torch.Tensor  # (B,) long: valid KV positions of each row once this forward wrote its tokens
    max_kv_len: int  # max(kv_len): how much of the cache attention reads
    last_index: torch.Tensor  # (B,) long: which of the T positions gives each row's logits
    valid: torch.Tensor | None = None  # (B, T) bool: real tokens (None: all real, the decode case)
    # attention row chunks (start, end, kv_len to read); None: one chunk reading max_kv_len. With
    # rows sorted by length, short rows then skip the padding up to the batch's longest row
    chunks: list[tuple[int, int, int]] | None = None
    # (B,) bool, decode only: rows whose new KV is written; False rows (CUDA-graph bucket padding)
    # write back what their row already holds at that position. None: every row is real
    is_real: torch.Tensor | None = None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # LlamaRMSNorm op for op (fp32 statistics); a fused kernel would round differently
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    # x*cos + rotate_half(x)*sin with rotate_half(x) = cat(-x2, x1): roll gives cat(x2, x1) and the
    # sign lives in sin_signed = cat(-sin, sin), bit-identical to HF since (-a)*b == -(a*b)
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class _LayerWeights(NamedTuple):
    """One decoder layer's tensors, looked up once: `nn.Module.__getattr__` costs ~1 us a call."""

    ln1: torch.Tensor
    q: torch.Tensor
    q_bias: torch.Tensor | None
    k: torch.Tensor
    k_bias: torch.Tensor | None
    v: torch.Tensor
    v_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    ln2: torch.Tensor
    gate: torch.Tensor
    gate_bias: torch.Tensor | None
    up: torch.Tensor
    up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None

    @classmethod
    def of(cls, layer) -> _LayerWeights:
        a, m = layer.self_attn, layer.mlp
        return cls(layer.input_layernorm.weight, a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias,
                   a.v_proj.weight, a.v_proj.bias, a.o_proj.weight, a.o_proj.bias,
                   layer.post_attention_layernorm.weight, m.gate_proj.weight, m.gate_proj.bias,
                   m.up_proj.weight, m.up_proj.bias, m.down_proj.weight, m.down_proj.bias)


class LlamaRunner:
    """Runs `LlamaForCausalLM` layers functionally against a `KVCache`."""

    def __init__(self, model, kv: KVCache, compile: bool = False) -> None:
        cfg = model.config
        self.model = model
        self.kv = kv
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.hidden_act]
        self.cos, self.sin_signed = self._rope_tables(model, kv.max_seq_len)
        self.refresh_weights()
        self._layers_fn = self._run_layers
        if compile:
            self._layers_fn = torch.compile(self._run_layers, dynamic=True)

    @staticmethod
    def _rope_tables(model, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        rotary = model.model.rotary_emb
        rope_type = getattr(rotary, "rope_type", "default")
        if "dynamic" in rope_type or "longrope" in rope_type:
            raise NotImplementedError(f"rope_type {rope_type!r}: its frequencies depend on the sequence length")
        # per-position values: each entry is one product inv_freq * pos, so a table is exact. The angles
        # come from a fresh fp32 rotary module (the model's own inv_freq buffer is cast with the model: in
        # bf16 its frequencies are off by ~2^-9, cos by 0.3 at position 3,000); only the tables are cast.
        dtype = model.model.embed_tokens.weight.dtype
        device = model.model.embed_tokens.weight.device
        rotary = type(rotary)(model.config).to(device)  # fp32 buffers
        pos = torch.arange(max_seq_len, device=device)[None]  # (1, Tmax)
        probe = torch.zeros(1, dtype=torch.float32, device=device)
        with torch.no_grad():
            cos, sin = rotary(probe, pos)  # (1, Tmax, D) each, fp32
        half = cos.shape[-1] // 2
        sin_signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)  # (1, Tmax, D)
        return cos[0].to(dtype), sin_signed[0].to(dtype)  # (Tmax, D)

    def refresh_weights(self) -> None:
        """Re-read the model's parameter tensors; needed only if parameters were replaced, not updated in place."""
        m = self.model.model
        self.weights_version = getattr(self, "weights_version", -1) + 1  # CUDA graphs recapture on a change
        self.embed = m.embed_tokens.weight
        self.final_norm = m.norm.weight
        self.head, self.head_bias = self.model.lm_head.weight, self.model.lm_head.bias
        self.layers = [_LayerWeights.of(layer) for layer in m.layers]

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Write the batch's KV into the cache and return each row's next-token logits (B, V)."""
        h = F.embedding(batch.input_ids, self.embed)  # (B, T, C)
        cos = self.cos[batch.positions].unsqueeze(1)  # (B, 1, T, D)
        sin = self.sin_signed[batch.positions].unsqueeze(1)  # (B, 1, T, D)
        keys = torch.arange(batch.max_kv_len, device=h.device)  # (Tk,)
        mask = keys[None, None, :] < batch.kv_len[:, None, None]  # (B, 1, Tk)
        if batch.input_ids.shape[1] > 1:
            mask = mask & (keys[None, None, :] <= batch.positions[:, :, None])  # (B, T, Tk) causal
        mask = mask.unsqueeze(1)  # (B, 1, T or 1, Tk)
        if batch.valid is None:
            rows = torch.arange(batch.input_ids.shape[0], device=h.device)  # (B,)
            pad = None if batch.is_real is None else ~batch.is_real[:, None, None]  # (B, 1, 1)
            write = (rows, batch.positions[:, 0], None, None, pad)
        else:
            b_idx, t_idx = batch.valid.nonzero(as_tuple=True)  # (N,), (N,)
            write = (b_idx, batch.positions[b_idx, t_idx], b_idx, t_idx, None)
        chunks = batch.chunks or [(0, batch.input_ids.shape[0], batch.max_kv_len)]
        h = self._layers_fn(h, cos, sin, mask, write, batch.row_start, chunks)
        last = h[torch.arange(h.shape[0], device=h.device), batch.last_index]  # (B, C)
        last = _rms_norm(last, self.final_norm, self.eps)
        return F.linear(last, self.head, self.head_bias)  # (B, V)

    def _run_layers(self, h, cos, sin, mask, write, row_start: int, chunks: list[tuple[int, int, int]]):
        B, T, _ = h.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        rows, pos, b_idx, t_idx, pad = write
        for i, w in enumerate(self.layers):
            x = _rms_norm(h, w.ln1, self.eps)  # (B, T, C)
            q = F.linear(x, w.q, w.q_bias).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = F.linear(x, w.k, w.k_bias).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            v = F.linear(x, w.v, w.v_bias).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            q = _rope(q, cos, sin)  # (B, H, T, D)
            k = _rope(k, cos, sin)  # (B, Hkv, T, D)
            k_cache = self.kv.k[i, row_start:row_start + B]  # (B, Hkv, Tmax, D) view
            v_cache = self.kv.v[i, row_start:row_start + B]  # (B, Hkv, Tmax, D) view
            if b_idx is None:
                k_new, v_new = k[:, :, 0], v[:, :, 0]  # (B, Hkv, D) for each row's position
                if pad is not None:  # padding rows keep what is there: a read-modify-write, no branch
                    k_new = torch.where(pad, k_cache[rows, :, pos], k_new)  # (B, Hkv, D)
                    v_new = torch.where(pad, v_cache[rows, :, pos], v_new)  # (B, Hkv, D)
                k_cache[rows, :, pos] = k_new
                v_cache[rows, :, pos] = v_new
            else:
                k_cache[rows, :, pos] = k[b_idx, :, t_idx]  # (N, Hkv, D): real tokens only
                v_cache[rows, :, pos] = v[b_idx, :, t_idx]
            if len(chunks) == 1:
                o = self._attend(q, k_cache, v_cache, mask, chunks[0][2])  # (B, H, T, D)
            else:
                o = torch.cat([self._attend(q[a:b], k_cache[a:b], v_cache[a:b], mask[a:b], n)
                               for a, b, n in chunks])  # (B, H, T, D)
            o = o.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
            h = h + F.linear(o, w.o, w.o_bias)  # (B, T, C)
            x = _rms_norm(h, w.ln2, self.eps)  # (B, T, C)
            gate = F.linear(x, w.gate, w.gate_bias)  # (B, T, F)
            up = F.linear(x, w.up, w.up_bias)  # (B, T, F)
            h = h + F.linear(self.act(gate) * up, w.down, w.down_bias)  # (B, T, C)
        return h

    def _attend(self, q, k_cache, v_cache, mask, kv_len: int) -> torch.Tensor:
        # reads only the first kv_len positions of each row: the strided view costs no copy
        return F.scaled_dot_product_attention(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len],
                                              attn_mask=mask[..., :kv_len],
                                              enable_gqa=self.num_heads != self.num_kv_heads)  # (b, H, T, D)
