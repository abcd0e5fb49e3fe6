"""Collectives of the trainers' process group: torchrun's world for SFT, the RL learners' world
(`dist.num_learners` > 1, joined with `join`). Without a group every function here is the identity,
so a single process runs exactly the code it always did.

    >>> world_size(), rank()
    (1, 0)
    >>> all_reduce_sum([1.0, 2.5])
    [1.0, 2.5]
"""

from __future__ import annotations

import os

import torch


def join(rank: int, world: int, master_addr: str, master_port: int, device_type: str) -> None:
    """Join the learners' world as `rank` (gloo on CPU, nccl on CUDA) at rank 0's address. The launcher
    variables are set too, for DeepSpeed; LOCAL_RANK is 0 because a Ray actor sees only its own GPUs."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR=master_addr,
                      MASTER_PORT=str(master_port))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                            init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def comm_device() -> torch.device:
    """Where tensors sent over the group live: the current GPU under nccl, else the CPU."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the processes (float64 on the wire)."""
    if world_size() == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=comm_device())  # (K,)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: int) -> int:
    if world_size() == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=comm_device())  # (1,)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every gradient over the learners, in one flat buffer (a missing gradient counts as zero,
    so every rank sends the same buffer whatever its micro-batches touched)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (P,)
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()
