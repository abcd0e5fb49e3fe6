"""The learner: the policy (and PPO's critic) with their optimizers, one update per RL step; the reference.

Runs in-process (`dist=none`) or inside a Ray actor (`apr.cluster`). An update takes the step's
token-exact `SequenceBatch`, runs `train.inner_steps` optimizer steps over it in micro-batches of at
most `train.micro_batch_tokens` padded tokens (gradients accumulate; losses are normalised by the
whole batch's denominator, so micro-batching does not change the step), and bumps the policy version.
How a model is stepped (plain torch, or DeepSpeed ZeRO) is `train.strategy` (`apr.train.strategy`).

    >>> # learner = Learner(cfg)                    # policy, optimizer (+ critic) from cfg.init
    >>> # metrics = learner.update(batch, ref_logprobs)
    >>> # buckets = learner.export_weights()       # -> RolloutWorker.set_weights(buckets, learner.version)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from apr.model import load_checkpoint
from apr.rl.algos import aggregation_denominator, gae, rollout_is_weights
from apr.rl.batch import SequenceBatch, micro_batches
from apr.rl.config import RLConfig
from apr.rl.logprobs import Packing, batched_logprobs
from apr.rl.loss import policy_loss, value_loss
from apr.rl.weights import to_buckets
from apr.train import checkpoint as ckpt
from apr.train import collectives
from apr.train.device import autocast as autocast_for
from apr.train.device import resolve_precision, select_device
from apr.train.optim import build_optimizer, build_scheduler
from apr.train.strategy import STRATEGIES

LEARNER_STATE = "learner.pt"  # under the checkpoint's trainer/: the policy version and a torch critic's weights


class ValueModel(torch.nn.Module):
    """PPO's critic: the policy's Llama backbone (initialised from the same checkpoint) + a scalar head.

    `forward(ids)[:, t]` estimates the return before token t is generated (read at position t-1),
    aligned with `token_logprobs`."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from transformers import LlamaModel

        self.backbone = LlamaModel.from_pretrained(path, dtype=torch.float32)
        self.head = torch.nn.Linear(self.backbone.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        if packing is not None:  # the same packed rows as the policy's forward
            h = self.backbone(input_ids=packing.ids, position_ids=packing.position_ids,
                              use_cache=False).last_hidden_state  # (R, L, H)
            v = self.head(h.reshape(-1, h.shape[-1])[packing.source]).squeeze(-1).float()  # (M,)
            return packing.unpack(v)  # (N, T)
        h = self.backbone(input_ids=ids, use_cache=False).last_hidden_state  # (N, T, H)
        v = self.head(h).squeeze(-1).float()  # (N, T)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], 1)  # (N, T)


class RefPolicy:
    """The frozen initial policy, for the KL penalty (at the rollouts' temperature, as the policy's).

    `precision` `auto` is bf16 autocast where `device` has native bf16, else fp32."""

    def __init__(self, path: str, max_tokens: int, precision: str = "fp32", device: str = "cpu",
                 num_threads: int = 0, temperature: float = 1.0) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model = load_checkpoint(path)[0].to(self.device).eval()
        self.max_tokens = max_tokens
        self.precision = resolve_precision(precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        self.temperature = temperature

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return batched_logprobs(self.model, batch, self.max_tokens, self.autocast, self.device, self.temperature)


def ref_kwargs(cfg: RLConfig, device: str) -> dict:
    """The `RefPolicy` arguments of the run's reference on `device` (it picks its own threads)."""
    return {"path": cfg.init, "max_tokens": cfg.train.micro_batch_tokens, "precision": cfg.train.precision,
            "device": device, "temperature": cfg.logprob_temperature}


def _whitening(adv: torch.Tensor, mask: torch.Tensor) -> tuple:
    """Mean and std of the (N, T) advantages over generated tokens: of this batch, or of every
    learner's shard (two passes, as in one process)."""
    if collectives.world_size() == 1:
        n = mask.sum().clamp(min=1)
        mean = (adv * mask).sum() / n
        return mean, (((adv - mean) ** 2 * mask).sum() / n).sqrt()
    total, count = collectives.all_reduce_sum([float((adv * mask).sum()), float(mask.sum())])
    mean = total / max(count, 1.0)
    (sq,) = collectives.all_reduce_sum([float(((adv - mean) ** 2 * mask).sum())])
    return mean, (sq / max(count, 1.0)) ** 0.5


def make_trainable(cfg: RLConfig, model, lr: float, name: str, device: torch.device):
    """`train.strategy` stepping `model` (the policy, or the critic) with AdamW at `lr` (`apr.train`); the
    learners' gradients are summed at each step (`reduce="sum"`), so ranks may differ in micro-batches."""
    t = cfg.train
    strategy = STRATEGIES[t.strategy](device, t.precision, name=name, zero_stage=t.zero_stage, reduce="sum",
                                      grad_clip=cfg.optim.grad_clip, bf16_weights=t.precision == "bf16")
    model = model.to(device)
    optimizer = build_optimizer(model, cfg.optim, lr)
    # warmup and decay count RL steps (train.steps); the inner steps of one RL step share its rate
    strategy.setup(model, optimizer, build_scheduler(optimizer, cfg.optim, t.steps, optimizer_steps_per_step=t.inner_steps))
    return strategy


class Learner:
    """Policy + AdamW (+ critic + AdamW for PPO); `update` is one RL step (see the module docstring).

    `self.policy` / `self.critic` are `apr.train.strategy` strategies: `.model` runs forward (the
    module, or DeepSpeed's engine), `.module` is the model itself. `train.precision=auto` is resolved
    here, for the learner's device (`self.precision`: fp32 or bf16; `self.cfg` carries it)."""

    def __init__(self, cfg: RLConfig) -> None:
        from dataclasses import replace

        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.manual_seed(cfg.seed)
        self.device = select_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)
        cfg = self.cfg = replace(cfg, train=replace(t, precision=self.precision))  # what the strategies read
        self.autocast = autocast_for(self.precision, self.device)
        policy, self.tokenizer = load_checkpoint(cfg.init)
        policy.to(self.device, torch.float32)
        policy.config.use_cache = False
        policy.train()
        self.policy = make_trainable(cfg, policy, cfg.optim.lr, "policy", self.device)
        self.critic = None
        if cfg.uses_critic:
            critic = ValueModel(cfg.init).to(self.device).train()
            self.critic = make_trainable(cfg, critic, cfg.optim.critic_lr, "critic", self.device)
        self.version = 0  # optimizer updates applied (one per RL step)
        self.num_nonfinite = 0  # optimizer steps skipped for a non-finite loss or gradient, in all
        self.num_nonfinite_in_row = 0

    # ---- one RL step --------------------------------------------------------------------------------
    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        model = self.policy.model
        model.eval()
        try:
            return batched_logprobs(model, batch, self.cfg.train.micro_batch_tokens, self.autocast, self.device,
                                    self.cfg.logprob_temperature)
        finally:
            model.train()

    def update(self, batch: SequenceBatch, ref_logprobs: torch.Tensor | None = None, denom: float | None = None,
               num_tokens: int | None = None) -> dict:
        """`train.inner_steps` optimizer steps on `batch`; returns the step's learner metrics.

        With `dist.num_learners` > 1 `batch` is this rank's shard of the step, and `denom` / `num_tokens`
        are the whole step's aggregation denominator and generated tokens (default: `batch`'s own), so
        the gradients summed over the ranks (`apr.train.collectives`) are the single learner's."""
        cfg, t = self.cfg, self.cfg.train
        num_tokens = batch.num_tokens if num_tokens is None else num_tokens
        metrics: dict = {}
        if t.old_logprobs == "recompute":
            engine_logp = batch.old_logprobs
            batch.old_logprobs = self.logprobs(batch) * batch.mask
            (gap,) = collectives.all_reduce_sum([float(((engine_logp - batch.old_logprobs).abs() * batch.mask).sum())])
            metrics["rl/logprob_mismatch"] = gap / max(num_tokens, 1)
            if cfg.loss.rollout_is != "off":  # the samples came from the engine, the ratio's denominator is ours
                w = rollout_is_weights(batch.old_logprobs, engine_logp, batch.mask, cfg.loss.rollout_is,
                                       cfg.loss.rollout_is_cap)  # (N, T)
                batch.is_weights = w
                capped, total = collectives.all_reduce_sum([float(((w >= cfg.loss.rollout_is_cap) * batch.mask).sum()),
                                                            float(w.sum())])
                metrics["rl/is_capped_frac"] = capped / max(num_tokens, 1)
                metrics["rl/is_weight_mean"] = total / max(num_tokens, 1)
        values_returns = None
        if self.critic is not None:
            values_returns = self._gae(batch)
        if denom is None:
            denom = aggregation_denominator(cfg.loss.aggregation, batch.mask, batch.seq_weights)
        groups = micro_batches(batch.lengths.tolist(), t.micro_batch_tokens)
        num_groups = len(groups)
        if self.policy.needs_matched_micro_batches:  # ranks short of micro-batches repeat one with weight 0
            num_groups = collectives.all_reduce_max(num_groups)
        sums: dict[str, float] = {}
        for _ in range(t.inner_steps):
            self.policy.zero_grad()
            if self.critic is not None:
                self.critic.zero_grad()
            loss_total = vloss_total = 0.0
            for j in range(num_groups):
                is_real = j < len(groups)
                loss, vloss, s = self._micro_step(batch, groups[min(j, len(groups) - 1)], ref_logprobs,
                                                  values_returns, denom, num_tokens, j == num_groups - 1, is_real)
                loss_total += loss
                vloss_total += vloss
                for k, v in s.items():
                    sums[k] = sums.get(k, 0.0) + v
            metrics["rl/grad_norm"] = self.policy.step()
            critic_norm = None
            if self.critic is not None:
                metrics["rl/critic_grad_norm"] = critic_norm = self.critic.step()
                metrics["rl/value_loss"] = vloss_total
            self._count_nonfinite(metrics, metrics["rl/grad_norm"], loss_total, critic_norm, vloss_total)
            metrics["rl/loss"] = loss_total
        num_sequences = self._reduce_metrics(metrics, sums, len(batch))
        n = max(sums.get("tokens", 0.0), 1.0)
        metrics.update({"rl/kl": sums["kl"] / n, "rl/clip_frac": sums["clipped"] / n,
                        "rl/entropy": sums["entropy"] / n, "rl/ratio_dev": sums["ratio_dev"] / n,
                        "rl/lr": self.policy.lr, "rl/train_tokens": num_tokens,
                        "rl/train_sequences": num_sequences})
        self.version += 1
        return metrics

    def _micro_step(self, batch: SequenceBatch, group: list[list[int]], ref_logprobs: torch.Tensor | None,
                    values_returns: tuple | None, denom: float, num_tokens: int, is_last: bool,
                    is_real: bool) -> tuple[float, float, dict]:
        """Forward + backward of one micro-batch (policy, and critic); (policy loss, value loss, sums).
        `is_real=False`: a weight-0 repeat that only keeps the ranks' collectives matched."""
        cfg = self.cfg
        rows, sub, packing = Packing.of_group(batch, group)  # `group`: the micro-batch's packed rows of batch rows
        sub, packing = sub.to(self.device), packing.to(self.device)
        ref = None
        if ref_logprobs is not None:
            ref = ref_logprobs[torch.tensor(rows), :sub.ids.shape[1]].to(self.device)  # (n, t)
        def loss_fn(model):
            loss, s = policy_loss(model, sub, cfg.loss, ref, denom, self.autocast, cfg.logprob_temperature, packing)
            return (loss, s) if is_real else (loss * 0.0, {})

        loss, s = self.policy.forward_backward(loss_fn, is_last)
        if self.critic is None:
            return float(loss.detach()), 0.0, s
        old_values, returns = values_returns
        idx = torch.tensor(rows)
        L = sub.ids.shape[1]

        def value_loss_fn(model):
            with self.autocast():
                values = model(sub.ids, packing)  # (n, t)
            vl = cfg.loss.value_coef * value_loss(values.float(), old_values[idx, :L].to(self.device),
                                                  returns[idx, :L].to(self.device),
                                                  sub.mask, cfg.loss.value_clip, max(num_tokens, 1))
            return vl if is_real else vl * 0.0

        vl = self.critic.forward_backward(value_loss_fn, is_last)
        return float(loss.detach()), float(vl.detach()), s

    def _count_nonfinite(self, metrics: dict, grad_norm: float, loss: float, critic_norm: float | None = None,
                         value_loss: float | None = None) -> None:
        """Count an optimizer step the strategy skipped (its gradient norm, the same on every rank, is not
        finite: nothing was applied), the policy's or the critic's; `train.max_nonfinite_steps` such
        steps in a row stop the run."""
        policy_skipped = not math.isfinite(grad_norm)
        critic_skipped = critic_norm is not None and not math.isfinite(critic_norm)
        skipped = policy_skipped or critic_skipped
        metrics["rl/nonfinite_steps"] = metrics.get("rl/nonfinite_steps", 0) + int(policy_skipped)
        if critic_norm is not None:
            metrics["rl/critic_nonfinite_steps"] = metrics.get("rl/critic_nonfinite_steps", 0) + int(critic_skipped)
        self.num_nonfinite += int(skipped)
        self.num_nonfinite_in_row = self.num_nonfinite_in_row + 1 if skipped else 0
        metrics["rl/nonfinite_total"] = self.num_nonfinite
        which = " and ".join(n for n, s in (("policy", policy_skipped), ("critic", critic_skipped)) if s)
        if skipped:
            print(f"[rl] warning: {which} optimizer step skipped, gradient norm {grad_norm} (loss {loss})"
                  + (f", critic gradient norm {critic_norm} (value loss {value_loss})" if critic_skipped else "")
                  + f"; {self.num_nonfinite_in_row} in a row", flush=True)
        limit = self.cfg.train.max_nonfinite_steps
        if limit and self.num_nonfinite_in_row >= limit:
            raise FloatingPointError(
                f"{self.num_nonfinite_in_row} optimizer steps in a row had a non-finite loss or gradient "
                f"({which}) "
                f"(train.max_nonfinite_steps={limit}); none was applied. Lower optim.lr, check the data, or "
                f"resume from the newest checkpoint")

    def _reduce_metrics(self, metrics: dict, sums: dict, num_sequences: int) -> int:
        """Sum the losses, the token sums and the sequence count over the learners (in place); the
        grad norms are already the same on every rank. Returns the step's sequences."""
        if collectives.world_size() == 1:
            return num_sequences
        keys = [k for k in ("rl/loss", "rl/value_loss") if k in metrics]
        names = sorted(sums)
        out = collectives.all_reduce_sum([metrics[k] for k in keys] + [sums[k] for k in names] + [num_sequences])
        metrics.update(zip(keys, out))
        sums.update(zip(names, out[len(keys):]))
        return int(out[-1])

    def _gae(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill `batch.advantages` per token from the critic (whitened over generated tokens); (values, returns)."""
        a = self.cfg.algo
        values = torch.zeros(batch.ids.shape)  # (N, T)
        critic = self.critic.model
        critic.eval()
        with torch.no_grad():
            for group in micro_batches(batch.lengths.tolist(), self.cfg.train.micro_batch_tokens):
                rows, sub, packing = Packing.of_group(batch, group)
                packing = packing.to(self.device)
                with self.autocast():
                    v = critic(sub.ids.to(self.device), packing).float().cpu()  # (n, t)
                values[torch.tensor(rows), :v.shape[1]] = v
        critic.train()
        mask = batch.mask.float()
        # the reward arrives at each thread's last generated token
        last = (mask * torch.arange(mask.shape[1])).argmax(-1)  # (N,)
        rewards = torch.zeros_like(values)  # (N, T)
        rewards[torch.arange(len(batch)), last] = batch.thread_rewards.float() * (mask.sum(-1) > 0)
        adv, returns = gae(rewards, values * mask, mask, a.gamma, a.lam)  # (N, T) each
        mean, std = _whitening(adv, mask)
        batch.advantages = (adv - mean) / (std + 1e-6) * mask
        return values * mask, returns

    # ---- weights and checkpoints -----------------------------------------------------------------
    def export_weights(self, bucket_mb: float = 32.0) -> list[dict]:
        return to_buckets(self.policy.state_dict(), bucket_mb)

    def save(self, path: str | Path) -> None:
        """The checkpoint layout of `apr.train.checkpoint`: HF policy + tokenizer in `path`; under
        `path/trainer/` each strategy's state (`policy`, `critic`), every rank's RNG, and learner.pt (the
        policy version; a torch critic's weights). Over several learners every rank calls this (ZeRO
        gathers and DeepSpeed's checkpoint are collective); rank 0 writes the HF files and learner.pt."""
        path = Path(path)
        ckpt.save_model(path, self.policy, self.tokenizer)
        state = {"version": self.version}
        if self.critic is not None:
            self.critic.save_state(path / ckpt.TRAINER_DIR)
            if not self.critic.saves_weights:
                state["critic"] = self.critic.module.state_dict()
        if collectives.rank() == 0:
            torch.save(state, path / ckpt.TRAINER_DIR / LEARNER_STATE)

    def load(self, path: str | Path) -> int:
        """Restore everything `save` wrote; returns the policy version."""
        path = Path(path)
        if not self.policy.saves_weights:
            self.policy.module.load_state_dict(load_checkpoint(path)[0].state_dict())
        ckpt.load_model_state(path, self.policy, collectives.rank())
        state = torch.load(path / ckpt.TRAINER_DIR / LEARNER_STATE, weights_only=False)
        if self.critic is not None:
            if "critic" in state:
                self.critic.module.load_state_dict(state["critic"])
            self.critic.load_state(path / ckpt.TRAINER_DIR)
        self.version = state["version"]
        return self.version
