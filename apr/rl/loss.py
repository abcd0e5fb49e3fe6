"""The losses of one learner micro-batch: PPO-clip + k3 KL to the reference - entropy bonus; the critic's.

    >>> # loss, sums = policy_loss(model, batch, LossConfig(), ref_logprobs=None)
    >>> # sums["kl"] / sums["tokens"] is the mean KL per generated token
"""

from __future__ import annotations

import contextlib

import torch

from apr.rl.algos import AGGREGATIONS, POLICY_LOSSES, kl_k3, log_ratio
from apr.rl.batch import SequenceBatch
from apr.rl.config import LossConfig
from apr.rl.logprobs import Packing, token_logprobs


def token_advantages(batch: SequenceBatch) -> torch.Tensor:
    """(N, T): per-thread advantages broadcast over tokens, or per-token ones (PPO) as they are."""
    adv = batch.advantages
    return adv if adv.dim() == 2 else adv[:, None].expand(batch.ids.shape).contiguous()


def policy_loss(model, batch: SequenceBatch, cfg: LossConfig, ref_logprobs: torch.Tensor | None = None,
                denom: float | None = None, autocast=contextlib.nullcontext, temperature: float = 1.0,
                packing: Packing | None = None) -> tuple[torch.Tensor, dict]:
    """Scalar loss to backpropagate, and detached sums over generated tokens (kl, clipped, entropy, tokens).

    `denom`: the whole batch's aggregation denominator when `batch` is one micro-batch of it.
    `temperature`: the rollouts' sampling temperature (log-probs of the distribution sampled from).
    `packing`: `batch`'s rows packed for the forward (`apr.rl.logprobs.Packing`); None: the rows as they are."""
    # Rows are right-padded: under causal attention padding never reaches a real token, so no mask.
    with autocast():
        logp, entropy = token_logprobs(model, batch.ids, entropy_grad=cfg.entropy_coef > 0,
                                       temperature=temperature, packing=packing)  # (N, T), (N, T)
    adv = token_advantages(batch)  # (N, T)
    per_token, clipped = POLICY_LOSSES[cfg.policy](logp, batch.old_logprobs, adv, clip=cfg.clip,
                                                   mask=batch.mask, clip_ratio_c=cfg.clip_ratio_c)  # (N, T)
    if batch.is_weights is not None:  # truncated importance weights of the sampler's tokens (loss.rollout_is)
        per_token = per_token * batch.is_weights
    kl = kl_k3(logp, ref_logprobs, batch.mask) if ref_logprobs is not None else torch.zeros_like(logp)  # (N, T)
    per_token = per_token + cfg.kl_coef * kl - cfg.entropy_coef * entropy
    # masked positions hold anything (a -inf log-prob of a pad token): select, never multiply by 0
    per_token = torch.where(batch.mask.bool(), per_token, torch.zeros_like(per_token))  # (N, T)
    loss = AGGREGATIONS[cfg.aggregation](per_token, batch.mask, batch.seq_weights, denom)
    m = batch.mask.float()
    ratio = torch.exp(log_ratio(logp.detach(), batch.old_logprobs, batch.mask))  # (N, T)
    sums = {"kl": float((kl.detach() * m).sum()), "clipped": float((clipped * m).sum()),
            "entropy": float((entropy.detach() * m).sum()), "tokens": float(m.sum()),
            "ratio_dev": float(((ratio - 1).abs() * m).sum())}
    return loss, sums


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, denom: float) -> torch.Tensor:
    """Clipped squared error of the critic over generated tokens, summed / `denom`. All (N, T)."""
    err = (values - returns) ** 2  # (N, T)
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (N, T)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * (err * mask.float()).sum() / max(denom, 1e-8)
