"""Rollouts (runtime thread trees) -> token-exact training sequences, one per thread, each with the
advantage its tree earned, credited to it (`algo.advantage`, `algo.credit`: registries in `apr.rl.algos`).

Nothing is decoded or re-tokenized: the ids and log-probs the engine sampled are the ones
trained on, and the generated-token mask excludes prompts and runtime-written results.

    >>> # batch = sequences_from_trees(trees, rewards, group_ids, advantage="grpo", credit="root")
"""

from __future__ import annotations

import torch

from apr.rl.algos import ADVANTAGES, CREDIT
from apr.rl.batch import SequenceBatch


def advantage_params(algo) -> dict:
    """The `algo.*` fields the chosen estimator reads (its registered `params`), e.g. grpo's norm_std and eps."""
    return {name: getattr(algo, name) for name in ADVANTAGES[algo.advantage].params}


def _thread_info(tree, outcomes: list[int] | None) -> list[dict]:
    threads = tree.threads()
    outcomes = outcomes or [0] * len(threads)
    return [{"is_root": t.parent is None, "outcome": o} for t, o in zip(threads, outcomes)]


def sequences_from_trees(trees, rewards: list[float], group_ids: list[int], advantage: str = "grpo",
                         credit: str = "root", pad_id: int = 0, outcomes: list[list[int]] | None = None,
                         **adv_kwargs) -> SequenceBatch:
    """Every thread of every tree as a training sequence with its (credited) advantage.

    `advantage` names an entry of ADVANTAGES (`gae`: the learner's critic fills per-token ones in later).
    `outcomes[k]`: tree k's per-thread outcomes for `credit=child_outcome` (`Rollout.thread_outcomes`)."""
    r = torch.tensor(rewards, dtype=torch.float32)  # (B,)
    groups = torch.tensor(group_ids)  # (B,)
    estimator = ADVANTAGES[advantage]
    adv_tree = estimator(r, groups, **adv_kwargs)  # (B,)
    scale = estimator.scale(r, groups, **adv_kwargs)  # (B,)
    # a thread's bonus (its advantage minus the root's) is capped at the group's largest root advantage, so a
    # group that barely varies (a tiny std: a huge scale) cannot let a bonus outweigh the outcome signal
    cap = torch.zeros_like(adv_tree)  # (B,)
    for g in groups.unique():
        cap[groups == g] = adv_tree[groups == g].abs().max()
    rows, masks, lps, advs, weights, owners, scores = [], [], [], [], [], [], []
    for k, tree in enumerate(trees):
        threads = tree.threads()
        info = _thread_info(tree, outcomes[k] if outcomes else None)
        root_adv, limit = float(adv_tree[k]), float(cap[k])
        per_thread = [root_adv + min(max(a - root_adv, -limit), limit)
                      for a in CREDIT[credit](root_adv, info, scale=float(scale[k]))]
        scores += CREDIT[credit](float(r[k]), info, scale=1.0)
        # threads that generated nothing (a child cut before its first token) carry no weight
        num_trained = max(sum(t.num_generated > 0 for t in threads), 1)
        for t, a in zip(threads, per_thread):
            rows.append(t.all_ids)
            masks.append(t.full_mask)
            lps.append([0.0] * len(t.prompt_ids) + list(t.logprobs))
            advs.append(a)
            weights.append(1.0 / num_trained if t.num_generated > 0 else 0.0)
            owners.append(k)
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros(len(rows), T, dtype=torch.long)  # (N, T)
    old = torch.zeros(len(rows), T)  # (N, T)
    for i, (r, m, lp) in enumerate(zip(rows, masks, lps)):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(m)] = torch.tensor(m)
        old[i, :len(lp)] = torch.tensor(lp) * torch.tensor(m, dtype=torch.float32)
    return SequenceBatch(ids, mask, old, torch.tensor(advs), torch.tensor(weights), torch.tensor(owners),
                         torch.tensor([len(x) for x in rows]), torch.tensor(scores))
