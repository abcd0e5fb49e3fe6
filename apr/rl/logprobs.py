"""Log-probs of sequences under a model: the one forward that the loss, the recomputed old log-probs and
the reference share, at the rollouts' sampling temperature.

    >>> # logp, entropy = token_logprobs(model, ids, temperature=1.0)        # (N, T) each
    >>> # ref = batched_logprobs(ref_model, batch, max_tokens=16384)        # (N, T), no gradients
"""

from __future__ import annotations

import contextlib

import torch

from apr.rl.batch import SequenceBatch, micro_batches


def token_logprobs(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   entropy_grad: bool = False, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each token given its prefix, entropy of the predictive distribution), both (N, T).

    The distribution is the one rollouts sampled from: logits / `temperature` (as verl does; the
    engine returns log-probs of the same tempered distribution, `apr.engine.sampler`).
    Position 0 has no prefix and gets 0; labels are NOT shifted by hand beyond this one alignment.
    The entropy is computed without a graph unless `entropy_grad` (an entropy bonus needs one),
    and no (N, T, V) log-softmax is kept: log p = logit - logsumexp.
    """
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
        for rows in micro_batches(batch.lengths.tolist(), max_tokens):
            sub = batch.select(rows)
            with autocast():
                logp, _ = token_logprobs(model, sub.ids.to(device), temperature=temperature)  # (n, t)
            out[torch.tensor(rows), :logp.shape[1]] = logp.float().cpu()
    return out
