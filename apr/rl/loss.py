"""The policy loss of one learner step: PPO-clip + k3 KL to the reference - entropy bonus.

    >>> # loss, metrics = policy_loss(model, batch, PolicyLossConfig(), ref_logprobs=None)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apr.config import check
from apr.rl.algos import AGGREGATIONS, POLICY_LOSSES, kl_k3
from apr.rl.batch import SequenceBatch, token_logprobs


@dataclass
class PolicyLossConfig:
    loss: str = "ppo_clip"
    clip: float = 0.2
    kl_coef: float = 0.001  # the paper: 0.001 (0.01 for SoS+)
    entropy_coef: float = 0.0
    aggregation: str = "token_mean"  # or seq_mean_per_rollout (the paper's 1/threads weighting)

    def __post_init__(self) -> None:
        check(self.loss in POLICY_LOSSES, "rl.loss", self.loss, ", ".join(POLICY_LOSSES))
        check(self.aggregation in AGGREGATIONS, "rl.aggregation", self.aggregation, ", ".join(AGGREGATIONS))
        check(self.clip > 0, "rl.clip", self.clip, "a positive number")
        check(self.kl_coef >= 0, "rl.kl_coef", self.kl_coef, ">= 0")


def policy_loss(model, batch: SequenceBatch, cfg: PolicyLossConfig, ref_logprobs: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict]:
    """Scalar loss to backpropagate and detached metrics (KL, clip fraction, entropy)."""
    # Rows are right-padded: under causal attention padding never reaches a real token, so no mask.
    logp, entropy = token_logprobs(model, batch.ids)  # (N, T), (N, T)
    adv = batch.advantages[:, None].expand_as(logp)  # (N, T)
    per_token, clipped = POLICY_LOSSES[cfg.loss](logp, batch.old_logprobs, adv, clip=cfg.clip)  # (N, T)
    mask = batch.mask
    kl = kl_k3(logp, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logp)  # (N, T)
    per_token = per_token + cfg.kl_coef * kl - cfg.entropy_coef * entropy
    agg = AGGREGATIONS[cfg.aggregation]
    loss = agg(per_token, mask, batch.seq_weights)
    m = mask.float()
    n = m.sum().clamp(min=1)
    kl, entropy = kl.detach(), entropy.detach()
    metrics = {"rl/kl": float((kl * m).sum() / n), "rl/clip_frac": float((clipped * m).sum() / n),
               "rl/entropy": float((entropy * m).sum() / n), "rl/loss": float(loss.detach())}
    return loss, metrics

