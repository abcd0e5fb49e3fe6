"""Rollouts -> sequences token-exact; the policy loss on a tiny model."""

import pytest
import torch

from apr.engine.scripted import ScriptedEngine
from apr.model import ModelConfig, build_model
from apr.protocol import ProtocolIds, render_tree
from apr.rl.config import LossConfig
from apr.rl.logprobs import token_logprobs
from apr.rl.loss import policy_loss
from apr.rl.sequences import sequences_from_trees
from apr.runtime import Runtime, RuntimeConfig
from apr.search import SearchConfig, solve
from apr.task import CountdownConfig, generate_problems


@pytest.fixture(scope="module")
def trees(tokenizer):
    problems = generate_problems(CountdownConfig(num_numbers=4), 2, seed=4)
    rendered = [render_tree(solve(p, SearchConfig("apr", promising_prob=1.0), seed=i).trace, tokenizer)
                for i, p in enumerate(problems)]
    full = {tuple(t.ids[:t.mask.index(1)]): t.ids for r in rendered for t in r}
    engine = ScriptedEngine(lambda prompt, ctx: full[prompt][len(ctx)])
    rt = Runtime(engine, ProtocolIds.from_tokenizer(tokenizer), RuntimeConfig(max_thread_tokens=100_000))
    return rt.run([r[0].ids[:r[0].mask.index(1)] for r in rendered], num_samples=2), rendered


def test_sequences_are_token_exact_with_credit(trees):
    out, rendered = trees
    batch = sequences_from_trees(out, rewards=[1.0, 0.0, 1.0, 1.0], group_ids=[0, 0, 1, 1])
    expected = [t for k in (0, 0, 1, 1) for t in rendered[k]]
    assert batch.ids.shape[0] == len(expected)
    for i, t in enumerate(expected):
        n = len(t.ids)
        assert batch.ids[i, :n].tolist() == t.ids and batch.mask[i, :n].tolist() == t.mask
        assert batch.mask[i, n:].sum() == 0
    # every thread of a tree carries the tree's GRPO advantage; problem 1's group is all-equal -> 0
    owners = batch.tree_index.tolist()
    adv = batch.advantages.tolist()
    a0 = [a for a, o in zip(adv, owners) if o == 0]
    a1 = [a for a, o in zip(adv, owners) if o == 1]
    assert len(set(a0)) == 1 and a0[0] > 0 and len(set(a1)) == 1 and a1[0] < 0
    assert all(a == 0 for a, o in zip(adv, owners) if o >= 2)
    assert batch.seq_weights[0].item() == pytest.approx(1 / out[0].metrics()["num_threads"])
    assert (batch.old_logprobs[batch.mask == 0] == 0).all()


def test_policy_loss_on_tiny_model(trees, tokenizer):
    out, _ = trees
    model = build_model(ModelConfig("t", 32, 1, 2, None, 64, 4096), len(tokenizer))
    batch = sequences_from_trees(out, rewards=[1.0, 0.0, 1.0, 0.0], group_ids=[0, 0, 1, 1])
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch.ids)
    batch.old_logprobs = logp * batch.mask  # on-policy: ratio 1
    cfg = LossConfig(kl_coef=0.0)
    loss, m = policy_loss(model, batch, cfg, ref_logprobs=logp.detach())
    assert m["clipped"] == 0.0 and m["kl"] == pytest.approx(0.0, abs=1e-6) and m["tokens"] == batch.num_tokens
    # on-policy PPO-clip loss = -token-mean of the advantages
    expected = -(batch.advantages[:, None] * batch.mask).sum() / batch.mask.sum()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    paper = LossConfig(aggregation="seq_mean_per_rollout")
    assert torch.isfinite(policy_loss(model, batch, paper, ref_logprobs=logp.detach())[0])


@pytest.mark.parametrize("attn", ["sdpa", "sdpa_packed"])
def test_packed_forward_equals_padded_rows(trees, tokenizer, attn):
    """The learner's packed micro-batches give every thread the log-probs, entropies, values and gradients
    of its own right-padded row: no token attends across the threads sharing a packed row (sdpa, the
    default; tests/sft/test_packing.py shows transformers' packed-row masking under eager too)."""
    from apr.rl.batch import flat, micro_batches
    from apr.rl.learner import ValueModel
    from apr.rl.logprobs import Packing

    out, _ = trees
    cfg = ModelConfig.preset("tiny", num_layers=2, init_std=0.2, attn_implementation=attn)
    # float64: the packed and padded paths add in different orders; in fp32 that alone moves a few
    # gradient entries by ~5e-4, so exactness is checked where rounding is out of the way
    model = build_model(cfg, len(tokenizer), seed=3).train().double()
    batch = sequences_from_trees(out, rewards=[1.0, 0.0, 1.0, 0.0], group_ids=[0, 0, 1, 1])
    lengths = batch.lengths.tolist()
    (group,) = micro_batches(lengths, max_tokens=max(lengths) * len(lengths))  # one micro-batch, all of it
    assert any(len(row) > 1 for row in group) and len(group) < len(lengths)  # threads actually share rows
    sub = batch.select(flat(group))
    packing = Packing(sub.ids, sub.lengths, [len(r) for r in group])
    packed, packed_entropy = token_logprobs(model, sub.ids, packing=packing)
    padded, padded_entropy = token_logprobs(model, sub.ids)
    real = packing.targets  # (n, t): tokens with a prefix
    assert real.sum() == (sub.lengths - 1).sum()
    torch.testing.assert_close(packed[real], padded[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_entropy[real], padded_entropy[real], atol=1e-5, rtol=1e-5)
    assert (packed[~real] == 0).all()
    grads = [torch.autograd.grad((lp * real).sum(), list(model.parameters())) for lp in (packed, padded)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the check has teeth: positions that do not restart per thread let threads see each other
    leaky = Packing(sub.ids, sub.lengths, [len(r) for r in group])
    leaky.position_ids = torch.arange(leaky.ids.numel()).view_as(leaky.ids) % leaky.ids.shape[1]
    assert (token_logprobs(model, sub.ids, packing=leaky)[0][real] - padded[real]).abs().max() > 1e-3
    # the critic reads the same packed rows
    critic = ValueModel.__new__(ValueModel)
    torch.nn.Module.__init__(critic)
    critic.backbone, critic.head = model.model, torch.nn.Linear(cfg.hidden_size, 1).double()
    with torch.no_grad():
        torch.testing.assert_close(critic(sub.ids, packing)[real], critic(sub.ids)[real], atol=1e-5, rtol=1e-5)


def test_packing_refuses_rows_whose_threads_do_not_fit():
    # review (issue 25 item 7): the row width is the longest thread, and only single threads were checked,
    # so rows [2, 1] for lengths [3, 2, 3] wrote the second thread over the next row's first
    from apr.rl.logprobs import Packing

    ids = torch.arange(1, 25).view(3, 8)
    with pytest.raises(ValueError, match=r"packing: row 0 holds 5 tokens, more than the row length 3"):
        Packing(ids, torch.tensor([3, 2, 3]), [2, 1])
    ok = Packing(ids, torch.tensor([3, 2, 5]), [2, 1])  # 3 + 2 fit a row of 5
    assert ok.ids.tolist() == [[1, 2, 3, 9, 10], [17, 18, 19, 20, 21]]
    with pytest.raises(ValueError, match="rows do not hold"):
        Packing(ids, torch.tensor([3, 2, 5]), [1, 1])


def test_micro_batches_pack_rows_within_the_token_budget():
    import random

    from apr.rl.batch import micro_batches

    rng = random.Random(0)
    for _ in range(100):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 60))]
        budget = rng.choice([300, 1000, 4096])
        groups = micro_batches(lengths, budget)
        assert sorted(i for g in groups for row in g for i in row) == list(range(len(lengths)))
        for g in groups:
            row_len = max(lengths[i] for row in g for i in row)
            assert all(sum(lengths[i] for i in row) <= row_len for row in g)
            assert len(g) * row_len <= budget or len(g) == 1
        padded_rows = sum(len(g) * max(lengths[i] for row in g for i in row) for g in groups)
        assert padded_rows <= sum(max(lengths) for _ in lengths)  # never more than padding every row
