"""Weight sync payloads: a state dict cut into buckets of about `bucket_mb`, and put back.

One object-store object (or one in-process hand-over) per bucket, not one call per tensor.

    >>> import torch
    >>> sd = {"a": torch.zeros(256, 256), "b": torch.ones(3), "c": torch.zeros(256, 256)}
    >>> buckets = to_buckets(sd, bucket_mb=0.3)
    >>> [sorted(b) for b in buckets]
    [['a', 'b'], ['c']]
    >>> sorted(name for b in buckets for name in b) == sorted(sd)
    True
"""

from __future__ import annotations


def to_buckets(state_dict: dict, bucket_mb: float) -> list[dict]:
    """Consecutive tensors grouped until a bucket would exceed `bucket_mb` (a large tensor gets its own).

    Tensors are detached CPU copies, so the payload can leave the learner's process or device."""
    limit = bucket_mb * 2**20
    buckets: list[dict] = []
    current: dict = {}
    size = 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            buckets.append(current)
            current, size = {}, 0
        current[name] = tensor.detach().to("cpu", copy=True)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def load_buckets(model, buckets: list[dict]) -> None:
    """Copy bucketed weights into `model` in place (shapes and names must match exactly)."""
    import torch

    params = dict(model.state_dict(keep_vars=False))
    seen = set()
    with torch.no_grad():
        for bucket in buckets:
            for name, tensor in bucket.items():
                if name not in params:
                    raise KeyError(f"weight sync: the rollout model has no parameter {name!r}")
                params[name].copy_(tensor.to(params[name].dtype))
                seen.add(name)
    missing = [n for n in params if n not in seen and not n.endswith("rotary_emb.inv_freq")]
    if missing:
        raise KeyError(f"weight sync: {len(missing)} parameters were not sent, e.g. {missing[:3]}")
