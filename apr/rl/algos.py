"""Advantage estimators, credit assignment, policy losses and loss aggregations: small pure functions in
registries, one signature per kind, chosen by name from config (as verl's `core_algos`), never by `if`
chains in the loop. What the loop must know of a variant is a trait set at registration (e.g. an
estimator's `uses_critic`, an aggregation's `denominator`); registering a name twice is an error.

- advantage `(rewards (B,), group_ids (B,), **params) -> (B,)` per tree; traits `uses_critic`,
  `needs_groups`, `params` (the `algo.*` fields it reads), `scale` (what it multiplies a reward by);
- credit `(root_advantage, threads, scale=1.0, **) -> [per thread]`; trait `needs_outcomes`;
- policy loss `(logp, old_logp, advantages, clip, mask) -> (per-token loss, clipped)` (all (B, T));
- aggregation `(loss, mask, seq_weights, denom) -> scalar`; trait `denominator(mask, seq_weights)`.

    >>> import torch
    >>> adv = ADVANTAGES["grpo"](torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    >>> [round(a, 3) for a in adv.tolist()]
    [0.707, -0.707, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable] = {}
CREDIT: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
AGGREGATIONS: dict[str, Callable] = {}


def register_in(table: dict, name: str, **traits):
    """A decorator that adds a function to `table` under `name` (twice is an error), with `traits` as attributes."""
    def wrap(fn):
        if name in table:
            raise ValueError(f"{name!r} is registered twice (as {table[name].__qualname__} and {fn.__qualname__})")
        for key, value in traits.items():
            setattr(fn, key, value)
        table[name] = fn
        return fn

    return wrap


def register_advantage(name: str, *, uses_critic: bool = False, needs_groups: bool = True,
                       params: tuple[str, ...] = (), scale: Callable | None = None):
    """`scale(rewards, group_ids, **params) -> (B,)`: d advantage / d reward (default: `reward_scale`)."""
    return register_in(ADVANTAGES, name, uses_critic=uses_critic, needs_groups=needs_groups, params=params,
                     scale=scale or reward_scale)


def register_credit(name: str, *, needs_outcomes: bool = False):
    return register_in(CREDIT, name, needs_outcomes=needs_outcomes)


def register_policy_loss(name: str):
    return register_in(POLICY_LOSSES, name)


def register_aggregation(name: str, *, denominator: Callable):
    return register_in(AGGREGATIONS, name, denominator=denominator)


def reward_scale(rewards: torch.Tensor, group_ids: torch.Tensor, norm_std: bool = True, eps: float = 1e-6,
                 **_) -> torch.Tensor:
    """(B,) what the group normalisation multiplies a reward by: 1 / (std + eps) with `norm_std` (grpo),
    else 1; and 0 in a group whose rewards are all equal (no signal: nothing is paid there).

    A per-thread reward `r + x` normalised with its group's statistics has advantage
    `adv_root + x * scale`: `credit` uses it so that bonuses enter before the normalisation."""
    scale = torch.zeros_like(rewards, dtype=torch.float32)  # (B,)
    for g in group_ids.unique():
        idx = group_ids == g
        r = rewards[idx].float()
        if r.numel() > 1 and r.std() > 0:
            scale[idx] = 1.0 / (float(r.std(unbiased=True)) + eps) if norm_std else 1.0
    return scale


# ---- advantages over rollouts (one scalar per tree) --------------------------------------------------
@register_advantage("grpo", params=("norm_std", "eps"))
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, norm_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised reward: (r - mean_group) / (std_group + eps); std is the unbiased one.

    A group whose rewards are all equal gets zero advantage (no signal, no noise).
    """
    adv = torch.zeros_like(rewards, dtype=torch.float32)  # (B,)
    for g in group_ids.unique():
        idx = group_ids == g
        r = rewards[idx].float()
        centred = r - r.mean()
        if norm_std and r.numel() > 1 and r.std() > 0:
            centred = centred / (r.std(unbiased=True) + eps)
        adv[idx] = centred
    return adv


@register_advantage("rloo", scale=lambda rewards, group_ids, **_: reward_scale(rewards, group_ids, norm_std=False))
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, **_) -> torch.Tensor:
    """Leave-one-out baseline: r_i - mean of the other samples of its group. A bonus x added to r_i adds
    exactly x to its advantage (scale 1 where the group has signal, 0 where it has none)."""
    adv = torch.zeros_like(rewards, dtype=torch.float32)  # (B,)
    for g in group_ids.unique():
        idx = group_ids == g
        r = rewards[idx].float()
        n = r.numel()
        adv[idx] = r - (r.sum() - r) / (n - 1) if n > 1 else torch.zeros_like(r)
    return adv


@register_advantage("gae", uses_critic=True, needs_groups=False,
                    scale=lambda rewards, group_ids, **_: torch.ones_like(rewards, dtype=torch.float32))
def critic_placeholder(rewards: torch.Tensor, group_ids: torch.Tensor, **_) -> torch.Tensor:
    """PPO: the learner's critic computes per-token advantages (`gae` below); until then a tree carries its reward."""
    return rewards.float()


# ---- credit assignment: a tree's advantage -> each of its threads ------------------------------------
@register_credit("root")
def credit_root(root_advantage: float, threads: list[dict], scale: float = 1.0, **_) -> list[float]:
    """Every thread of the tree gets the root's advantage (the paper's end-to-end choice)."""
    return [root_advantage] * len(threads)


@register_credit("child_outcome", needs_outcomes=True)
def credit_child_outcome(root_advantage: float, threads: list[dict], scale: float = 1.0, bonus: float = 0.5
                         ) -> list[float]:
    """Root: the root's advantage. A child: the root's advantage + `bonus` x its outcome x `scale`.

    `threads[i]` has `is_root` and `outcome` (`apr.search.child_outcome`): +1 a verified partial
    solution the root's answer used, 0 a correct "no solution" report or an unused valid path, -1 an
    invented or wrong result, a missed solution, or no join. `scale` (`reward_scale`) makes the bonus
    part of the child's reward before group normalisation: in a group with no signal it is 0.
    """
    return [root_advantage if t["is_root"] else root_advantage + bonus * t.get("outcome", 0) * scale
            for t in threads]


# ---- PPO: GAE over one thread's tokens ------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation per row over the masked (generated) positions.

    rewards, values, mask: (B, T); rewards are usually zero except the last generated token.
    Masked-out positions are skipped (the runtime-written results don't break the chain).
    Returns (advantages, returns), zero where mask is 0.
    """
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float32)  # (B, T)
    last_gae = torch.zeros(B)  # (B,)
    next_value = torch.zeros(B)  # (B,)
    for t in reversed(range(T)):
        m = mask[:, t].float()  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        gae_t = delta + gamma * lam * last_gae  # (B,)
        adv[:, t] = gae_t * m
        last_gae = torch.where(m > 0, gae_t, last_gae)
        next_value = torch.where(m > 0, values[:, t], next_value)
    returns = (adv + values) * mask  # (B, T)
    return adv, returns


# ---- policy losses (per token) ------------------------------------------------------------------
@register_policy_loss("ppo_clip")
def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float = 0.2,
                  mask: torch.Tensor | None = None, clip_ratio_c: float | None = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss and whether the token was clipped. All (B, T).

    The log-ratio is taken only where `mask` is 1 (0 elsewhere) and clamped to [-20, 20] as in verl,
    so a stale or padded position can never overflow exp(). Dual clip (verl's `clip_ratio_c`): where
    the advantage is negative the loss is at most `-A * clip_ratio_c`, so a token the current policy
    finds far likelier than the sampler did (engine/learner mismatch on a rare token) cannot dominate
    the step; None turns it off."""
    ratio = torch.exp(log_ratio(logp, old_logp, mask))  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)  # (B, T)
    loss = torch.maximum(unclipped, clipped)  # (B, T)
    was_clipped = clipped > unclipped
    if clip_ratio_c is not None:
        cap = -advantages * clip_ratio_c  # (B, T)
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(capped, cap, loss)
        was_clipped = was_clipped | capped
    return loss, was_clipped.float()


def rollout_is_weights(learner_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                       cap: float) -> torch.Tensor:
    """Truncated importance weights pi_learner / pi_sampler of the sampled tokens (TRL's and verl's rollout
    correction): per token, or one per row from the summed log-ratio (`sequence`), capped at `cap`; 0 where
    `mask` is 0. All (N, T).

        >>> import torch
        >>> w = rollout_is_weights(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -3.0]]), torch.ones(1, 2),
        ...                        "token", 2.0)
        >>> [round(x, 3) for x in w[0].tolist()]
        [1.0, 2.0]
    """
    d = log_ratio(learner_logp, sampler_logp, mask)  # (N, T)
    if mode == "sequence":
        d = d.sum(dim=1, keepdim=True).clamp(-20.0, 20.0).expand_as(d)
    return torch.exp(d).clamp(max=cap) * mask.float()


def log_ratio(logp: torch.Tensor, other: torch.Tensor, mask: torch.Tensor | None = None,
              bound: float = 20.0) -> torch.Tensor:
    """logp - other where `mask` is 1 and 0 elsewhere (prompt, joined results, padding), clamped to
    [-bound, bound]: exp() of it is finite whatever the masked positions hold. (B, T)."""
    d = logp - other  # (B, T)
    if mask is not None:
        d = torch.where(mask.bool(), d, torch.zeros_like(d))  # (B, T)
    return d.clamp(-bound, bound)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0.

    Computed only where `mask` is 1 (0 elsewhere), the log-ratio clamped to [-20, 20] and k3 to
    [-10, 10] (verl's bounds), so one wild position cannot make the loss inf or NaN. (B, T)."""
    d = log_ratio(ref_logp, logp, mask)  # (B, T)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


# ---- aggregation of per-token losses -----------------------------------------------------------------
@register_aggregation("token_mean", denominator=lambda mask, seq_weights: float(mask.sum()))
def token_mean(loss: torch.Tensor, mask: torch.Tensor, seq_weights: torch.Tensor | None = None,
               denom: float | None = None) -> torch.Tensor:
    """Mean over every generated token of the batch.

    `denom` (see `aggregation_denominator`) is the whole batch's when `loss` is one micro-batch of it,
    so that micro-batch losses add up to the batch's."""
    m = mask.float()
    return (loss * m).sum() / (m.sum().clamp(min=1) if denom is None else max(denom, 1e-8))


@register_aggregation("seq_mean_per_rollout", denominator=lambda mask, seq_weights: float(seq_weights.sum()))
def seq_mean_per_rollout(loss: torch.Tensor, mask: torch.Tensor, seq_weights: torch.Tensor | None = None,
                         denom: float | None = None) -> torch.Tensor:
    """The paper's aggregation: each sequence's token mean, weighted by 1/threads of its rollout,
    averaged over rollouts (so a rollout with many threads counts as much as one with few).

    seq_weights: (B,) = 1 / number of threads in the sequence's rollout.
    """
    m = mask.float()
    per_seq = (loss * m).sum(-1) / m.sum(-1).clamp(min=1)  # (B,)
    w = seq_weights if seq_weights is not None else torch.ones_like(per_seq)
    return (per_seq * w).sum() / (w.sum().clamp(min=1e-8) if denom is None else max(denom, 1e-8))


def aggregation_denominator(name: str, mask: torch.Tensor, seq_weights: torch.Tensor) -> float:
    """What `AGGREGATIONS[name]` divides by over a whole batch (generated tokens, or rollouts)."""
    return AGGREGATIONS[name].denominator(mask, seq_weights)
