"""Advantage, credit and loss functions against hand-computed values."""

import math

import pytest
import torch

from apr.rl.algos import ADVANTAGES, AGGREGATIONS, CREDIT, POLICY_LOSSES, gae, kl_k3, reward_scale


def test_grpo_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = ADVANTAGES["grpo"](r, g, eps=0.0)
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    assert adv[:3].tolist() == pytest.approx([(1 - mean) / std, -mean / std, -mean / std])
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]  # all-equal group: no signal
    no_std = ADVANTAGES["grpo"](r, g, norm_std=False)
    assert no_std[:3].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_rloo_by_hand():
    adv = ADVANTAGES["rloo"](torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]))
    assert adv.tolist() == pytest.approx([1.0, -0.5, -0.5])


def test_credit_assignment():
    threads = [{"is_root": True, "outcome": 0}, {"is_root": False, "outcome": 1},
               {"is_root": False, "outcome": -1}, {"is_root": False, "outcome": 0}]
    assert CREDIT["root"](0.7, threads) == [0.7] * 4
    assert CREDIT["child_outcome"](0.7, threads, bonus=0.5) == pytest.approx([0.7, 1.2, 0.2, 0.7])
    # the bonus is part of the reward before normalisation: scaled like it, and 0 without signal
    assert CREDIT["child_outcome"](0.7, threads, scale=2.0, bonus=0.5) == pytest.approx([0.7, 1.7, -0.3, 0.7])
    assert CREDIT["child_outcome"](0.0, threads, scale=0.0, bonus=0.5) == [0.0] * 4


def test_reward_scale():
    rewards, groups = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])
    std = torch.tensor([1.0, 0.0]).std().item()
    assert reward_scale(rewards, groups, eps=0.0).tolist() == pytest.approx([1 / std, 1 / std, 0.0, 0.0])
    assert reward_scale(rewards, groups, norm_std=False).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_gae_matches_hand_computation_and_skips_masked():
    # one row: generated, written (masked), generated, generated(last, reward 1)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 9.0, 0.25, 0.75]])
    mask = torch.tensor([[1, 0, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d3 = 1.0 - 0.75
    d2 = 0.0 + 0.75 - 0.25
    d0 = 0.0 + 0.25 - 0.5
    a3, a2 = d3, d2 + 0.5 * d3
    a0 = d0 + 0.5 * a2
    assert adv[0].tolist() == pytest.approx([a0, 0.0, a2, a3])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, 0.0, a2 + 0.25, a3 + 0.75])


def test_ppo_clip_by_hand():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, clipped = POLICY_LOSSES["ppo_clip"](logp, old, adv, clip=0.2)
    # ratio 1.5, A=1 -> min(1.5, 1.2) = 1.2 -> loss -1.2 (clipped); ratio 0.5, A=-1 -> max(0.5, 0.8)... loss 0.8
    assert loss[0].tolist() == pytest.approx([-1.2, 0.8, -2.2])
    assert clipped[0].tolist() == [1.0, 1.0, 0.0]


def test_ppo_loss_is_bounded_for_negative_advantages_by_the_dual_clip():
    # review against verl (issue 25 item 1): for A < 0 and a large ratio max(-A r, -A clip(r)) grew without
    # limit (log-ratio 3, A = -1: loss 20.1, gradient 20.1); verl caps it at -A * clip_ratio_c
    logp = torch.tensor([[3.0, 3.0, 0.1, -3.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    adv = torch.tensor([[-1.0, 1.0, -1.0, -1.0]])
    loss, clipped = POLICY_LOSSES["ppo_clip"](logp, old, adv, clip=0.2, clip_ratio_c=3.0)
    assert loss[0].tolist() == pytest.approx([3.0, -1.2, math.exp(0.1), 0.8])  # capped / clipped / as is
    assert clipped[0].tolist() == [1.0, 1.0, 0.0, 1.0]
    loss.sum().backward()
    assert logp.grad[0, 0].item() == 0.0  # no gradient through the cap
    assert logp.grad[0, 2].item() == pytest.approx(math.exp(0.1))
    # off (None): the plain clipped loss, unbounded as before
    open_loss, _ = POLICY_LOSSES["ppo_clip"](logp.detach(), old, adv, clip=0.2, clip_ratio_c=None)
    assert open_loss[0, 0].item() == pytest.approx(math.exp(3.0))


def test_dual_clip_is_configured_and_checked():
    from apr.config import ConfigError
    from apr.rl.config import LossConfig

    assert LossConfig().clip_ratio_c == 3.0
    assert LossConfig(clip_ratio_c=None).clip_ratio_c is None
    with pytest.raises(ConfigError, match="loss.clip_ratio_c"):
        LossConfig(clip_ratio_c=1.0)


def test_kl_k3_zero_at_equal_and_positive():
    a = torch.log(torch.tensor([0.2, 0.5]))
    assert kl_k3(a, a).tolist() == [0.0, 0.0]
    b = torch.log(torch.tensor([0.4, 0.1]))
    k = kl_k3(a, b)
    r = torch.exp(b - a)
    assert k.tolist() == pytest.approx((r - torch.log(r) - 1).tolist())
    assert (k > 0).all()


def test_aggregations_by_hand():
    loss = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    assert AGGREGATIONS["token_mean"](loss, mask).item() == pytest.approx((1 + 3 + 2 + 12) / 6)
    # sequences 0,1 belong to a 2-thread rollout (weight 1/2), sequence 2 to a 1-thread rollout
    w = torch.tensor([0.5, 0.5, 1.0])
    expected = (0.5 * 2 + 0.5 * 2 + 1.0 * 4) / 2.0
    assert AGGREGATIONS["seq_mean_per_rollout"](loss, mask, w).item() == pytest.approx(expected)
    empty = torch.zeros(1, 3)
    assert AGGREGATIONS["token_mean"](loss[:1], empty).item() == 0.0


def test_registries_refuse_a_name_twice_and_keep_one_signature_per_kind():
    """Every selectable variant is registered (issue 16 §4): one signature per kind, traits instead of string
    branches, and a second registration of a name is an error that names both functions."""
    import inspect

    from apr.rl.algos import register_advantage
    from apr.rl.rollout import REWARDS, register_reward

    with pytest.raises(ValueError, match="'grpo' is registered twice"):
        register_advantage("grpo")(lambda rewards, group_ids, **_: rewards)
    with pytest.raises(ValueError, match="'countdown' is registered twice"):
        register_reward("countdown")(lambda problem, text, algo: 0.0)
    kinds = {"advantage": (ADVANTAGES, ["rewards", "group_ids"]), "credit": (CREDIT, ["root_advantage", "threads", "scale"]),
             "policy loss": (POLICY_LOSSES, ["logp", "old_logp", "advantages", "clip", "mask"]),
             "aggregation": (AGGREGATIONS, ["loss", "mask", "seq_weights", "denom"]),
             "reward": (REWARDS, ["problem", "text", "algo"])}
    for kind, (table, first) in kinds.items():
        for name, fn in table.items():
            params = [p for p in inspect.signature(fn).parameters if p != "_"]
            assert params[:len(first)] == first, (kind, name, params)
    # what the loop asks of a variant is a trait, not its name
    assert [n for n, f in ADVANTAGES.items() if f.uses_critic] == ["gae"]
    assert not ADVANTAGES["gae"].needs_groups and ADVANTAGES["rloo"].needs_groups
    assert ADVANTAGES["grpo"].params == ("norm_std", "eps")
    assert [n for n, f in CREDIT.items() if f.needs_outcomes] == ["child_outcome"]
    mask, weights = torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([0.5, 0.5])
    assert AGGREGATIONS["token_mean"].denominator(mask, weights) == 3.0
    assert AGGREGATIONS["seq_mean_per_rollout"].denominator(mask, weights) == 1.0


def test_gae_estimator_carries_rewards_until_the_critic_fills_them_in():
    r, g = torch.tensor([1.0, 0.0]), torch.tensor([0, 1])
    assert ADVANTAGES["gae"](r, g).tolist() == [1.0, 0.0]
    assert ADVANTAGES["gae"].scale(r, g).tolist() == [1.0, 1.0]


def test_rl_learning_rate_schedule_counts_rl_steps_whatever_the_inner_steps(tmp_path):
    # review (issue 25 item 4): the schedule was laid out over train.steps but stepped once per optimizer
    # step, so with 2 inner steps the decay ended halfway: [1, .868, .55, .232, .1, .1, .1, .1]
    from apr.config import from_dict
    from apr.model.hf import load_checkpoint
    from apr.rl.config import RLConfig
    from apr.rl.learner import make_trainable
    from apr.tokenizer import build_tokenizer
    from tests.rl._setup import make_checkpoint

    model = load_checkpoint(make_checkpoint(build_tokenizer(), tmp_path / "m"))[0]
    cfg = from_dict(RLConfig, {"init": "x", "train": {"steps": 4, "inner_steps": 2, "precision": "fp32"},
                               "optim": {"lr": 1.0, "min_lr_ratio": 0.1}})
    trainable = make_trainable(cfg, model, 1.0, "policy", torch.device("cpu"))
    factors = []
    for _ in range(8):
        factors.append(round(trainable.lr, 3))
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        trainable.step()
    assert factors == [1.0, 1.0, 0.868, 0.868, 0.55, 0.55, 0.232, 0.232]


def _trees(n: int):
    """Trees of a root and one child (the least `sequences_from_trees` reads)."""
    from types import SimpleNamespace as NS

    def thread(parent):
        return NS(parent=parent, all_ids=[2, 5, 6], full_mask=[0, 1, 1], prompt_ids=[2], logprobs=[-0.1, -0.2],
                  num_generated=2)

    out = []
    for _ in range(n):
        root = thread(None)
        out.append(NS(threads=lambda root=root: [root, thread(root)]))
    return out


def test_rloo_pays_a_child_bonus_leave_one_out_and_refuses_norm_std():
    # review against verl/TRL (issue 25 item 2): rloo had no scale of its own, so a child bonus was paid with
    # GRPO's 1/std: rewards [1,0,0,0,0] gave a child advantage of 2.118 where leave-one-out gives 1.5
    from apr.config import ConfigError
    from apr.rl.config import AlgoConfig
    from apr.rl.sequences import sequences_from_trees

    batch = sequences_from_trees(_trees(5), [1.0, 0, 0, 0, 0], [0] * 5, advantage="rloo", credit="child_outcome",
                                 outcomes=[[0, 1]] * 5)
    advs = batch.advantages.view(5, 2)  # (tree, [root, child])
    assert advs[0].tolist() == pytest.approx([1.0, 1.5])
    assert advs[1].tolist() == pytest.approx([-0.25, 0.25])
    with pytest.raises(ConfigError, match="algo.norm_std: got False; accepted: true .*grpo"):
        AlgoConfig(advantage="rloo", norm_std=False)


def test_a_child_bonus_never_outweighs_the_groups_outcome_signal():
    # review (issue 25 item 3): format_bonus 0.1 and rewards [.1,.1,.1,.1,0] gave GRPO a scale of 22.4: a child
    # bonus of +-11.2 beside root advantages of 0.447 / -1.789
    from apr.rl.sequences import sequences_from_trees

    batch = sequences_from_trees(_trees(5), [0.1, 0.1, 0.1, 0.1, 0.0], [0] * 5, credit="child_outcome",
                                 outcomes=[[0, 1], [0, -1], [0, 1], [0, 1], [0, -1]])
    advs = batch.advantages.view(5, 2)
    roots = advs[:, 0]
    biggest = float(roots.abs().max())
    assert biggest == pytest.approx(1.789, abs=1e-3)
    assert ((advs[:, 1] - roots).abs() <= biggest + 1e-6).all()  # capped at the group's largest root advantage
    assert float(advs[0, 1] - roots[0]) == pytest.approx(biggest)  # +: capped, not dropped
    # a bonus below the cap is paid as it is: rewards [1,0,0,0,0] (scale 2.236, bonus 1.118 < 1.789)
    plain = sequences_from_trees(_trees(5), [1.0, 0, 0, 0, 0], [0] * 5, credit="child_outcome",
                                 outcomes=[[0, 1]] * 5).advantages.view(5, 2)
    assert float(plain[0, 1] - plain[0, 0]) == pytest.approx(0.5 * 2.236, abs=1e-3)


def test_rollout_importance_correction_reweights_the_loss_only_where_sampler_and_learner_differ():
    # review against verl/TRL (issue 25 item 4): with old_logprobs=recompute the samples come from the engine and
    # the ratio's denominator from the learner; the gap was only logged
    from apr.model.config import ModelConfig, build_model
    from apr.rl.algos import rollout_is_weights
    from apr.rl.batch import SequenceBatch
    from apr.rl.config import LossConfig
    from apr.rl.loss import policy_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="t", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                    max_position_embeddings=64), vocab_size=40, seed=0)
    ids = torch.randint(4, 40, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[:, :3] = 0  # a prompt
    learner = torch.randn(3, 10).clamp(max=-0.1) * mask  # the learner's recomputed log-probs
    batch = SequenceBatch(ids, mask, learner, torch.tensor([1.0, -0.5, 0.3]), torch.ones(3), torch.arange(3),
                          torch.full((3,), 10), torch.zeros(3))

    def grads(is_weights):
        batch.is_weights = is_weights
        loss, _ = policy_loss(model, batch, LossConfig(kl_coef=0.0))
        return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]

    plain = grads(None)
    for mode in ("token", "sequence"):
        same = rollout_is_weights(learner, learner, mask, mode, 2.0)  # sampler == learner: weights 1
        assert torch.equal(same, mask.float())
        assert all(torch.allclose(a, b) for a, b in zip(plain, grads(same)))
        engine = learner - 0.3 * torch.rand(3, 10) * mask  # the engine found its tokens less likely
        w = rollout_is_weights(learner, engine, mask, mode, 2.0)
        assert (w[mask.bool()] > 1).all() and (w <= 2.0).all() and (w[~mask.bool()] == 0).all()
        assert any(not torch.allclose(a, b) for a, b in zip(plain, grads(w)))
    # a huge gap is truncated at the cap
    assert rollout_is_weights(learner, learner - 50 * mask, mask, "token", 2.0)[mask.bool()].eq(2.0).all()


def test_rollout_importance_correction_needs_recomputed_old_logprobs():
    from apr.config import ConfigError, from_dict
    from apr.rl.config import RLConfig

    with pytest.raises(ConfigError, match="loss.rollout_is: got 'token'; accepted: off with train.old_logprobs=rollout"):
        from_dict(RLConfig, {"init": "x", "loss": {"rollout_is": "token"}})
    cfg = from_dict(RLConfig, {"init": "x", "loss": {"rollout_is": "sequence"}, "train": {"old_logprobs": "recompute"}})
    assert cfg.loss.rollout_is == "sequence"
