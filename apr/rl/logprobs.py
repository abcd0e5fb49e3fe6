"""Log-probs of sequences under a model: the one forward that the loss, the recomputed old log-probs and
the reference share, at the rollouts' sampling temperature.

The learner's micro-batches run packed (`Packing`): several threads per row, `position_ids` restarting
at 0 per thread, which transformers turns into block-diagonal causal attention (as SFT's packed rows),
so no token attends across threads; the vocabulary-wide work runs on real tokens only.

    >>> # logp, entropy = token_logprobs(model, ids, temperature=1.0)        # (N, T) each
    >>> # ref = batched_logprobs(ref_model, batch, max_tokens=16384)        # (N, T), no gradients
"""

from __future__ import annotations

import contextlib

import torch

from apr.rl.batch import SequenceBatch, flat, micro_batches


class Packing:
    """Right-padded rows (n, t) laid out as packed rows (R, L): row i of the micro-batch goes, in order,
    into packed row after packed row (`row_sizes` rows each), L = the longest row's length.

    `ids` / `position_ids` (R, L) feed the model; `targets` is the (n, t) mask of tokens that have a prefix
    (1 <= j < length), `source` the packed flat position (in R * L) of each such token's predecessor, whose
    output predicts it, in the row-major order of `targets`."""

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor, row_sizes: list[int], pad_id: int = 0) -> None:
        n, t = ids.shape
        lens = lengths.tolist()
        length = max(lens) if lens else 1
        starts, r, k = [0] * n, 0, 0  # flat start of each row in the packed layout
        if sum(row_sizes) != n:
            raise ValueError(f"packing: {row_sizes} rows do not hold the {n} sequences of lengths {lens}")
        for size in row_sizes:
            col = 0
            for _ in range(size):
                starts[k] = r * length + col
                col += lens[k]
                k += 1
            if col > length:  # it would spill into the next row
                raise ValueError(f"packing: row {r} holds {col} tokens, more than the row length {length} "
                                 f"(the longest sequence); row sizes {row_sizes}, lengths {lens}")
            r += 1
        j = torch.arange(t)  # (t,)
        valid = j[None, :] < lengths[:, None]  # (n, t)
        flat_pos = torch.tensor(starts)[:, None] + j[None, :]  # (n, t)
        packed = torch.full((len(row_sizes) * length,), pad_id, dtype=ids.dtype)
        packed[flat_pos[valid]] = ids[valid]
        positions = torch.arange(len(row_sizes) * length) % length  # padding tails count from 0: their own sequence
        positions[flat_pos[valid]] = j.expand(n, t)[valid]
        self.ids = packed.view(len(row_sizes), length)  # (R, L)
        self.position_ids = positions.view(len(row_sizes), length)  # (R, L)
        self.targets = valid & (j[None, :] >= 1)  # (n, t)
        self.source = flat_pos[self.targets] - 1  # (M,)
        self.target_ids = ids[self.targets]  # (M,)
        self.shape = (n, t)

    @classmethod
    def of_group(cls, batch: SequenceBatch, group: list[list[int]]) -> tuple[list[int], SequenceBatch, Packing]:
        """One micro-batch of `micro_batches`: its batch rows, its sub-batch (right-padded), their packing."""
        rows = flat(group)
        sub = batch.select(rows)
        return rows, sub, cls(sub.ids, sub.lengths, [len(r) for r in group])

    def to(self, device) -> Packing:
        for name in ("ids", "position_ids", "targets", "source", "target_ids"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def unpack(self, per_token: torch.Tensor) -> torch.Tensor:
        """(M,) values of the `targets` -> (n, t), 0 elsewhere (differentiable)."""
        return per_token.new_zeros(self.shape).masked_scatter(self.targets, per_token)


def token_logprobs(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   entropy_grad: bool = False, temperature: float = 1.0,
                   packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each token given its prefix, entropy of the predictive distribution), both (N, T).

    The distribution is the one rollouts sampled from: logits / `temperature` (as verl does; the
    engine returns log-probs of the same tempered distribution, `apr.engine.sampler`).
    Position 0 has no prefix and gets 0; labels are NOT shifted by hand beyond this one alignment.
    The entropy is computed without a graph unless `entropy_grad` (an entropy bonus needs one),
    and no (N, T, V) log-softmax is kept: log p = logit - logsumexp.
    With `packing` (of `ids`), the model runs on the packed rows and positions past a row's length get 0.
    """
    if packing is not None:
        hidden = model(input_ids=packing.ids, position_ids=packing.position_ids, use_cache=False).logits
        logits = hidden.reshape(-1, hidden.shape[-1])[packing.source].float()  # (M, V): real tokens only
        if temperature != 1.0:
            logits = logits / temperature
        lse = torch.logsumexp(logits, -1)  # (M,)
        logp = logits.gather(-1, packing.target_ids[:, None]).squeeze(-1) - lse  # (M,)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)  # (M,)
        return packing.unpack(logp), packing.unpack(entropy)
    logits = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()  # (N, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature  # (N, T-1, V)
    lse = torch.logsumexp(logits, -1)  # (N, T-1)
    logp = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - lse  # (N, T-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)  # (N, T-1)
    zero = torch.zeros(ids.shape[0], 1, device=ids.device)  # (N, 1)
    return torch.cat([zero, logp], 1), torch.cat([zero, entropy], 1)


def batched_logprobs(model, batch: SequenceBatch, max_tokens: int, autocast=contextlib.nullcontext,
                     device: torch.device | str = "cpu", temperature: float = 1.0) -> torch.Tensor:
    """(N, T) log-prob of every token under `model` (logits / `temperature`), without gradients, in micro-batches."""
    out = torch.zeros(batch.ids.shape)  # (N, T)
    with torch.no_grad():
        for group in micro_batches(batch.lengths.tolist(), max_tokens):
            rows, sub, packing = Packing.of_group(batch, group)
            packing = packing.to(device)
            with autocast():
                logp, _ = token_logprobs(model, sub.ids.to(device), temperature=temperature,
                                         packing=packing)  # (n, t)
            out[torch.tensor(rows), :logp.shape[1]] = logp.float().cpu()
    return out
