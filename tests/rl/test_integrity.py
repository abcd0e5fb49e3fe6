"""RL integrity: rewards read only what the root wrote, log-probs of the sampled distribution, a KL that
cannot turn a step into NaN, child credit that checks what a child returned."""

from __future__ import annotations

import math

import pytest

from apr.api import Reasoner
from apr.engine.scripted import ScriptedEngine
from apr.eval import EvalConfig, evaluate
from apr.rl.config import AlgoConfig, RolloutConfig
from apr.rl.rollout import RolloutWorker
from apr.runtime import Finish, RuntimeConfig
from apr.search import problem_prompt
from apr.task import Problem

PROBLEM = Problem([1, 2], 3)


def scripted_reasoner(tokenizer, threads: dict[str, str], runtime: RuntimeConfig | None = None) -> Reasoner:
    """Threads as {prompt text: whole thread text}; past its text a thread repeats ' 1' (never stops)."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    full = {tuple(enc(p)): enc(whole) for p, whole in threads.items()}
    filler = enc(" 1")[0]

    def script(prompt, ctx):
        ids = full[prompt]
        return ids[len(ctx)] if len(ctx) < len(ids) else filler

    return Reasoner(ScriptedEngine(script), tokenizer, runtime)


def root_prompt(problem: Problem = PROBLEM) -> str:
    return "<bos>" + problem_prompt(problem)


def child_supplies_answer(tokenizer) -> Reasoner:
    """The child joins `answer 1+2`; the root writes nothing of its own but <eos> after the results."""
    root = root_prompt()
    return scripted_reasoner(tokenizer, {
        root: root + "<spawn>1 2</spawn><result>answer 1+2</result><eos>",
        "<bos>1 2": "<bos>1 2<join>answer 1+2</join>",
    })


def cut_by_window(tokenizer) -> Reasoner:
    """The root writes a correct answer line, then rambles on until the window cuts it."""
    root = root_prompt()
    return scripted_reasoner(tokenizer, {root: root + "answer 1+2\n"}, RuntimeConfig(max_thread_tokens=40))


def rollout_worker(reasoner, **algo) -> RolloutWorker:
    return RolloutWorker("", RolloutConfig(), AlgoConfig(**algo), reasoner=reasoner)


# ---- 1. the answer is the root's own, after a clean end --------------------------------------------
def test_an_answer_a_child_joined_is_not_the_roots(tokenizer, tmp_path):
    res = child_supplies_answer(tokenizer).solve([1, 2], 3)
    assert res.tree.root.finish_reason == Finish.EOS  # the root did end cleanly
    assert res.answer is None and not res.correct
    [r] = rollout_worker(child_supplies_answer(tokenizer)).rollout([PROBLEM], 1, seed=0)
    assert r.reward == 0.0 and not r.correct
    [rec] = evaluate(child_supplies_answer(tokenizer), [PROBLEM], EvalConfig(windows=(1024,), progress=False),
                     tmp_path / "records.jsonl")
    assert not rec.correct


def test_a_root_cut_by_the_window_scores_nothing(tokenizer):
    res = cut_by_window(tokenizer).solve([1, 2], 3)
    assert res.tree.root.finish_reason == Finish.WINDOW
    assert res.answer == "1+2" and not res.correct and "eos" in res.reason
    [r] = rollout_worker(cut_by_window(tokenizer)).rollout([PROBLEM], 1, seed=0)
    assert r.reward == 0.0 and not r.correct
    # only an explicit algo.require_eos=false pays it
    [r] = rollout_worker(cut_by_window(tokenizer), require_eos=False).rollout([PROBLEM], 1, seed=0)
    assert r.reward == 1.0 and r.correct


def test_the_roots_own_answer_after_results_still_counts(tokenizer):
    root = root_prompt()
    reasoner = scripted_reasoner(tokenizer, {
        root: root + "<spawn>1 2</spawn><result>1+2=3</result>answer 1+2\n<eos>",
        "<bos>1 2": "<bos>1 2<join>1+2=3</join>",
    })
    res = reasoner.solve([1, 2], 3)
    assert res.answer == "1+2" and res.correct
    # an answer line inside the root's own spawn message is addressed to a child, not an answer
    reasoner = scripted_reasoner(tokenizer, {
        root: root + "<spawn>answer 1+2</spawn><result></result><eos>",
        "<bos>answer 1+2": "<bos>answer 1+2<join></join>",
    })
    assert reasoner.solve([1, 2], 3).answer is None



# ---- 2. log-probs of the distribution that was sampled ---------------------------------------------
def test_rollout_logprobs_equal_learner_logprobs_at_temperature(tokenizer, tmp_path):
    from apr.rl.learner import Learner
    from apr.rl.sequences import sequences_from_trees
    from tests.rl._setup import make_assets, rl_config

    init, data = make_assets(tokenizer, tmp_path)
    cfg = rl_config(tmp_path, init, data, **{"rollout.runtime.temperature": 0.7})
    worker = RolloutWorker(str(init), cfg.rollout, cfg.algo)
    rollouts = worker.rollout([PROBLEM, Problem([3, 4, 5], 2)], 2, seed=3)
    batch = sequences_from_trees([r.tree for r in rollouts], [0.0, 1.0, 0.0, 1.0], [0, 0, 1, 1])
    assert batch.num_tokens > 20
    learner = Learner(cfg)
    recomputed = learner.logprobs(batch) * batch.mask
    gap = (recomputed - batch.old_logprobs).abs().max()
    assert float(gap) < 1e-5
    # and they are the tempered distribution's, not the raw one's
    raw = Learner(rl_config(tmp_path, init, data)).logprobs(batch) * batch.mask
    assert float((raw - batch.old_logprobs).abs().max()) > 1e-2


@pytest.mark.parametrize("field,value", [("top_p", 0.9), ("top_k", 5)])
def test_truncated_sampling_is_refused_before_any_rollout(tmp_path, field, value):
    from apr.config import ConfigError
    from tests.rl._setup import rl_config

    with pytest.raises(ConfigError, match=f"rollout.runtime.{field}"):
        rl_config(tmp_path, tmp_path, tmp_path, **{f"rollout.runtime.{field}": value})


# ---- 3. the KL term can never produce NaN or inf ------------------------------------------------------
def test_a_wild_masked_position_leaves_the_loss_finite(tokenizer):
    import torch

    from apr.model import ModelConfig
    from apr.model.hf import build_for_tokenizer
    from apr.rl.batch import SequenceBatch
    from apr.rl.config import LossConfig
    from apr.rl.logprobs import token_logprobs
    from apr.rl.loss import policy_loss

    model = build_for_tokenizer(ModelConfig("t", 32, 2, 2, None, 64, 64), tokenizer, seed=0)
    ids = torch.randint(20, 60, (2, 12))  # (N, T)
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[:, 4:10] = 1
    with torch.no_grad():
        logp, _ = token_logprobs(model, ids)  # (N, T)
    ref = logp.clone()
    ref[0, 2] = logp[0, 2] + 100.0  # ref - logp = 100 at a prompt (masked) position
    old = logp * mask
    old[1, 11] = -200.0  # a stale value in the padding
    batch = SequenceBatch(ids, mask, old, torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5]),
                          torch.tensor([0, 1]), torch.tensor([12, 12]), torch.tensor([1.0, 0.0]))
    loss, sums = policy_loss(model, batch, LossConfig(kl_coef=0.1), ref_logprobs=ref)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in sums.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # at generated positions a huge log-ratio is bounded too
    ref[0, 5] = logp[0, 5] + 100.0
    assert torch.isfinite(policy_loss(model, batch, LossConfig(kl_coef=0.1), ref_logprobs=ref)[0])


@pytest.mark.parametrize("strategy,stage", [("torch", 0), ("deepspeed", 0), ("deepspeed", 2)])
def test_a_nonfinite_gradient_is_never_applied_and_is_counted(tokenizer, tmp_path, strategy, stage):
    import torch

    from apr.rl.learner import Learner
    from apr.rl.sequences import sequences_from_trees
    from tests.rl._setup import make_assets, rl_config

    if strategy == "deepspeed":
        pytest.importorskip("deepspeed")
    init, data = make_assets(tokenizer, tmp_path)
    cfg = rl_config(tmp_path, init, data, **{"train.strategy": strategy, "train.zero_stage": stage,
                                             "train.inner_steps": 1, "train.max_nonfinite_steps": 2})
    rollouts = RolloutWorker(str(init), cfg.rollout, cfg.algo).rollout([PROBLEM], 2, seed=1)
    batch = sequences_from_trees([r.tree for r in rollouts], [0.0, 1.0], [0, 0])
    learner = Learner(cfg)
    module = learner.policy.module
    before = {k: v.clone() for k, v in module.state_dict().items()}
    weight = module.model.embed_tokens.weight
    hook = weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    metrics = learner.update(batch)
    assert metrics["rl/nonfinite_steps"] == 1 and metrics["rl/nonfinite_total"] == 1
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(FloatingPointError, match="train.max_nonfinite_steps"):
        learner.update(batch)  # the second in a row stops the run
    hook.remove()
    learner.num_nonfinite_in_row = 0
    metrics = learner.update(batch)  # a finite step is applied again
    assert metrics["rl/nonfinite_steps"] == 0
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_a_nonfinite_critic_step_is_counted_and_stops_the_run_like_the_policys(tokenizer, tmp_path):
    # review (issue 25 item 6): only the policy's gradient norm was checked, so a NaN critic skipped every
    # step silently while PPO went on
    import torch

    from apr.rl.learner import Learner
    from apr.rl.sequences import sequences_from_trees
    from tests.rl._setup import make_assets, rl_config

    init, data = make_assets(tokenizer, tmp_path)
    cfg = rl_config(tmp_path, init, data, **{"algo.advantage": "gae", "train.inner_steps": 1,
                                             "train.max_nonfinite_steps": 2})
    rollouts = RolloutWorker(str(init), cfg.rollout, cfg.algo).rollout([PROBLEM], 2, seed=1)
    batch = sequences_from_trees([r.tree for r in rollouts], [0.0, 1.0], [0, 0])
    learner = Learner(cfg)
    critic = learner.critic.module
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    hook = next(p for p in critic.parameters() if p.requires_grad).register_hook(
        lambda g: torch.full_like(g, float("nan")))
    metrics = learner.update(batch)
    assert metrics["rl/critic_nonfinite_steps"] == 1 and metrics["rl/nonfinite_total"] == 1
    assert all(torch.equal(before[k], v) for k, v in critic.state_dict().items())  # nothing applied
    with pytest.raises(FloatingPointError, match="critic.*train.max_nonfinite_steps"):
        learner.update(batch)
    hook.remove()
    learner.num_nonfinite_in_row = 0
    metrics = learner.update(batch)
    assert metrics["rl/critic_nonfinite_steps"] == 0 and math.isfinite(metrics["rl/critic_grad_norm"])


# ---- 4. credit=child_outcome rewards correct, used results only ---------------------------------------
FOUR = Problem([39, 3, 47, 54], 59)


def two_children(tokenizer, second_join: str) -> Reasoner:
    """A correct tree: child 1 joins the real path, which the root answers with; child 2 joins `second_join`."""
    root = root_prompt(FOUR)
    m1, m2 = "node 0,3 59:[47,54,42] [39+3=42]\n", "node 0,1 59:[39,54,44] [47-3=44]\n"
    path = "39+3=42,47+54=101,101-42=59"
    return scripted_reasoner(tokenizer, {
        root: root + f"<spawn>{m1}<sep>{m2}</spawn><result>{path}<sep>{second_join}</result>"
                     "answer (47+54)-(39+3)\n<eos>",
        "<bos>" + m1: f"<bos>{m1}<join>{path}</join>",
        "<bos>" + m2: f"<bos>{m2}<join>{second_join}</join>",
    })


def child_advantages(tokenizer, second_join: str, group_rewards=(1.0, 0.0)) -> list[float]:
    from apr.rl.sequences import sequences_from_trees

    worker = rollout_worker(two_children(tokenizer, second_join), credit="child_outcome")
    [r] = worker.rollout([FOUR], 1, seed=0)
    assert r.correct and r.reward == 1.0
    # a group of two: this tree and a failed one (rewards 1, 0), so the group has signal
    batch = sequences_from_trees([r.tree, r.tree], list(group_rewards), [0, 0], credit="child_outcome",
                                 outcomes=[r.thread_outcomes, [0, 0, 0]])
    return batch.advantages[:3].tolist()


def test_an_invented_child_result_is_credited_below_a_real_one(tokenizer):
    root, real, invented = child_advantages(tokenizer, "1+1=7")
    assert invented < root < real


def test_a_correct_no_solution_report_is_not_penalised(tokenizer):
    # child 2's state [39,54,44] has a solution (47-3=44, 54-39=15, 44+15=59): an empty join there misses it
    root, real, missed = child_advantages(tokenizer, "")
    assert missed < root < real
    from apr.search import child_outcome
    assert child_outcome(FOUR, "node 0,2 59:[3,47,93] [39+54=93]\n", "", None) == 0  # none exists: neutral


def test_no_bonus_in_a_group_without_signal(tokenizer):
    root, real, invented = child_advantages(tokenizer, "1+1=7", group_rewards=(1.0, 1.0))
    assert root == real == invented == 0.0


# ---- 5. smaller items ------------------------------------------------------------------------------------
def test_children_that_generated_nothing_do_not_dilute_seq_mean(tokenizer):
    from apr.rl.sequences import sequences_from_trees

    root = root_prompt()
    reasoner = scripted_reasoner(tokenizer, {
        root: root + "<spawn>1 2<sep>2 1</spawn><result><sep></result>answer 1+2\n<eos>",
        "<bos>1 2": "<bos>1 2<join></join>",
        "<bos>2 1": "<bos>2 1<join></join>",
    }, RuntimeConfig(max_total_tokens=8))  # the root's 7-token spawn leaves its two children nothing
    [r] = rollout_worker(reasoner).rollout([PROBLEM], 1, seed=0)
    threads = r.tree.threads()
    assert [t.num_generated > 0 for t in threads] == [True, False, False]
    batch = sequences_from_trees([r.tree], [1.0], [0])
    assert batch.seq_weights.tolist() == [1.0, 0.0, 0.0]  # the root's loss is not divided by 3


def test_an_engine_length_end_inside_the_window_is_recorded_as_the_window(tokenizer, tmp_path):
    from tests.rl._setup import make_checkpoint

    init = make_checkpoint(tokenizer, tmp_path / "init")
    reasoner = Reasoner.from_pretrained(init, max_seq_len=64, max_batch_size=4)  # the engine holds 64 positions
    res = reasoner.solve([1, 2], 3, max_thread_tokens=200, temperature=1.0, seed=1)
    root = res.tree.root
    assert root.num_tokens < 200  # the engine, not the runtime's window of 200, stopped it...
    assert root.finish_reason == Finish.WINDOW  # ...and no budget was set: it is recorded as a window


def test_a_learner_with_recomputed_old_logprobs_weights_the_sampled_tokens(tokenizer, tmp_path):
    import torch

    from apr.rl.learner import Learner
    from apr.rl.sequences import sequences_from_trees
    from tests.rl._setup import make_assets, rl_config

    init, data = make_assets(tokenizer, tmp_path)
    cfg = rl_config(tmp_path, init, data, **{"train.old_logprobs": "recompute", "loss.rollout_is": "token",
                                             "train.inner_steps": 1})
    rollouts = RolloutWorker(str(init), cfg.rollout, cfg.algo).rollout([PROBLEM], 2, seed=1)
    batch = sequences_from_trees([r.tree for r in rollouts], [0.0, 1.0], [0, 0])
    batch.old_logprobs = (batch.old_logprobs - 0.2) * batch.mask  # as if the engine had found its tokens less likely
    metrics = Learner(cfg).update(batch)
    assert metrics["rl/logprob_mismatch"] > 0.1
    assert batch.is_weights is not None and torch.isfinite(batch.is_weights).all()
    assert 1.0 < metrics["rl/is_weight_mean"] <= 2.0 and 0.0 <= metrics["rl/is_capped_frac"] <= 1.0
    assert math.isfinite(metrics["rl/loss"])
