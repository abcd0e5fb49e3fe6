"""The learner: the policy (and PPO's critic) with their optimizers, one update per RL step; the reference.

Runs in-process (`dist=none`) or inside a Ray actor (`apr.dist`). An update takes the step's
token-exact `SequenceBatch`, runs `train.inner_steps` optimizer steps over it in micro-batches of at
most `train.micro_batch_tokens` padded tokens (gradients accumulate; losses are normalised by the
whole batch's denominator, so micro-batching does not change the step), and bumps the policy version.
How a model is stepped (plain torch, or DeepSpeed ZeRO) is `train.strategy` (`apr.rl.strategy`).

    >>> # learner = Learner(cfg)                    # policy, optimizer (+ critic) from cfg.init
    >>> # metrics = learner.update(batch, ref_logprobs)
    >>> # buckets = learner.export_weights()       # -> RolloutWorker.set_weights(buckets, learner.version)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from apr.model import load_checkpoint, save_checkpoint
from apr.rl.algos import aggregation_denominator, gae
from apr.rl.batch import SequenceBatch, micro_batches, token_logprobs
from apr.rl.config import RLConfig
from apr.rl.loss import policy_loss, value_loss
from apr.rl.strategy import STRATEGIES
from apr.rl.weights import to_buckets
from apr.sft.checkpoint import rng_state, set_rng_state

LEARNER_STATE = "learner.pt"


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def batched_logprobs(model, batch: SequenceBatch, max_tokens: int, autocast=contextlib.nullcontext,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, T) log-prob of every token under `model`, without gradients, in micro-batches."""
    out = torch.zeros(batch.ids.shape)  # (N, T)
    with torch.no_grad():
        for rows in micro_batches(batch.lengths.tolist(), max_tokens):
            sub = batch.select(rows)
            with autocast():
                logp, _ = token_logprobs(model, sub.ids.to(device))  # (n, t)
            out[torch.tensor(rows), :logp.shape[1]] = logp.float().cpu()
    return out


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

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids=ids, use_cache=False).last_hidden_state  # (N, T, H)
        v = self.head(h).squeeze(-1).float()  # (N, T)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], 1)  # (N, T)


class RefPolicy:
    """The frozen initial policy, for the KL penalty."""

    def __init__(self, path: str, max_tokens: int, precision: str = "fp32", device: str = "cpu",
                 num_threads: int = 0) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model = load_checkpoint(path)[0].to(self.device).eval()
        self.max_tokens = max_tokens
        self.autocast = _autocast(precision, self.device)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        return batched_logprobs(self.model, batch, self.max_tokens, self.autocast, self.device)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    """Policy + AdamW (+ critic + AdamW for PPO); `update` is one RL step (see the module docstring).

    `self.policy` / `self.critic` are `apr.rl.strategy` trainables: `.model` runs forward (the
    module, or DeepSpeed's engine), `.module` is the model itself."""

    def __init__(self, cfg: RLConfig) -> None:
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.device = _device(t.device)
        self.autocast = _autocast(t.precision, self.device)
        strategy = STRATEGIES[t.strategy]
        policy, self.tokenizer = load_checkpoint(cfg.init)
        policy.to(self.device, torch.float32)
        policy.config.use_cache = False
        policy.train()
        self.policy = strategy(policy, cfg, cfg.optim.lr, "policy", self.device)
        self.critic = None
        if cfg.uses_critic:
            critic = ValueModel(cfg.init).to(self.device).train()
            self.critic = strategy(critic, cfg, cfg.optim.critic_lr, "critic", self.device)
        self.version = 0  # optimizer updates applied (one per RL step)

    # ---- one RL step --------------------------------------------------------------------------------
    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        model = self.policy.model
        model.eval()
        try:
            return batched_logprobs(model, batch, self.cfg.train.micro_batch_tokens, self.autocast, self.device)
        finally:
            model.train()

    def update(self, batch: SequenceBatch, ref_logprobs: torch.Tensor | None = None) -> dict:
        """`train.inner_steps` optimizer steps on `batch`; returns the step's learner metrics."""
        cfg, t = self.cfg, self.cfg.train
        metrics: dict = {}
        if t.old_logprobs == "recompute":
            engine_logp = batch.old_logprobs
            batch.old_logprobs = self.logprobs(batch) * batch.mask
            metrics["rl/logprob_mismatch"] = float(((engine_logp - batch.old_logprobs).abs() * batch.mask).sum()
                                                   / max(batch.num_tokens, 1))
        old_values = returns = None
        if self.critic is not None:
            old_values, returns = self._gae(batch)
        denom = aggregation_denominator(cfg.loss.aggregation, batch.mask, batch.seq_weights)
        groups = micro_batches(batch.lengths.tolist(), t.micro_batch_tokens)
        sums: dict[str, float] = {}
        for _ in range(t.inner_steps):
            self.policy.zero_grad()
            if self.critic is not None:
                self.critic.zero_grad()
            loss_total = vloss_total = 0.0
            for j, rows in enumerate(groups):
                is_last = j == len(groups) - 1
                sub = batch.select(rows).to(self.device)
                ref = None if ref_logprobs is None else ref_logprobs[torch.tensor(rows), :sub.ids.shape[1]].to(self.device)
                loss, s = policy_loss(self.policy.model, sub, cfg.loss, ref, denom, self.autocast)
                self.policy.backward(loss, is_last)
                loss_total += float(loss.detach())
                for k, v in s.items():
                    sums[k] = sums.get(k, 0.0) + v
                if self.critic is not None:
                    idx = torch.tensor(rows)
                    L = sub.ids.shape[1]
                    with self.autocast():
                        values = self.critic.model(sub.ids)  # (n, t)
                    vl = cfg.loss.value_coef * value_loss(values.float(), old_values[idx, :L].to(self.device),
                                                          returns[idx, :L].to(self.device),
                                                          sub.mask, cfg.loss.value_clip, max(batch.num_tokens, 1))
                    self.critic.backward(vl, is_last)
                    vloss_total += float(vl.detach())
            metrics["rl/grad_norm"] = self.policy.step()
            if self.critic is not None:
                metrics["rl/critic_grad_norm"] = self.critic.step()
                metrics["rl/value_loss"] = vloss_total
            metrics["rl/loss"] = loss_total
        n = max(sums.get("tokens", 0.0), 1.0)
        metrics.update({"rl/kl": sums["kl"] / n, "rl/clip_frac": sums["clipped"] / n,
                        "rl/entropy": sums["entropy"] / n, "rl/ratio_dev": sums["ratio_dev"] / n,
                        "rl/lr": self.policy.lr, "rl/train_tokens": batch.num_tokens,
                        "rl/train_sequences": len(batch)})
        self.version += 1
        return metrics

    def _gae(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill `batch.advantages` per token from the critic (whitened over generated tokens); (values, returns)."""
        a = self.cfg.algo
        values = torch.zeros(batch.ids.shape)  # (N, T)
        critic = self.critic.model
        critic.eval()
        with torch.no_grad():
            for rows in micro_batches(batch.lengths.tolist(), self.cfg.train.micro_batch_tokens):
                sub = batch.select(rows)
                with self.autocast():
                    v = critic(sub.ids.to(self.device)).float().cpu()  # (n, t)
                values[torch.tensor(rows), :v.shape[1]] = v
        critic.train()
        mask = batch.mask.float()
        # the reward arrives at each thread's last generated token
        last = (mask * torch.arange(mask.shape[1])).argmax(-1)  # (N,)
        rewards = torch.zeros_like(values)  # (N, T)
        rewards[torch.arange(len(batch)), last] = batch.thread_rewards.float() * (mask.sum(-1) > 0)
        adv, returns = gae(rewards, values * mask, mask, a.gamma, a.lam)  # (N, T) each
        n = mask.sum().clamp(min=1)
        mean = (adv * mask).sum() / n
        std = (((adv - mean) ** 2 * mask).sum() / n).sqrt()
        batch.advantages = (adv - mean) / (std + 1e-6) * mask
        return values * mask, returns

    # ---- weights and checkpoints -----------------------------------------------------------------
    def export_weights(self, bucket_mb: float = 32.0) -> list[dict]:
        return to_buckets(self.policy.state_dict(), bucket_mb)

    def save(self, path: str | Path) -> None:
        """HF policy + tokenizer into `path`, and the learner's state (optimizers, critic, RNG, version):
        learner.pt, plus DeepSpeed's own checkpoint in `deepspeed/` under that strategy."""
        path = Path(path)
        save_checkpoint(self.policy.module, self.tokenizer, path, self.policy.hf_state_dict())
        state = {**self.policy.save_state(path), "version": self.version, "rng": rng_state()}
        if self.critic is not None:
            state.update({f"critic_{k}": v for k, v in self.critic.save_state(path).items()})
            if not self.critic.saves_weights:
                state["critic"] = self.critic.module.state_dict()
        torch.save(state, path / LEARNER_STATE)

    def load(self, path: str | Path) -> int:
        """Restore everything `save` wrote; returns the policy version."""
        path = Path(path)
        state = torch.load(path / LEARNER_STATE, weights_only=False)
        weights = None if self.policy.saves_weights else load_checkpoint(path)[0].state_dict()
        self.policy.load_state(path, state, weights)
        if self.critic is not None:
            critic_state = {k.removeprefix("critic_"): v for k, v in state.items() if k.startswith("critic_")}
            self.critic.load_state(path, critic_state, state.get("critic"))
        set_rng_state(state["rng"])
        self.version = state["version"]
        return self.version
