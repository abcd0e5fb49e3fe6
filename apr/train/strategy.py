"""How one model is stepped, registered by `train.strategy`: `torch` (plain AdamW; DDP under torchrun)
or `deepspeed` (ZeRO stage `zero_stage` around the same client AdamW; deepspeed imported lazily).
SFT steps its model with one; RL its policy, and PPO's critic, with one each.

One interface for both trainers:
- `setup(model, optimizer, scheduler)`; `model` is what runs forward (the module, DDP's wrapper, a
  compiled module, or DeepSpeed's engine), `module` the model itself;
- `forward_backward(loss_fn, is_last)` per micro-batch: `loss_fn(model)` returns the loss (or a tuple
  whose first item is the loss) already divided by the whole step's denominator, so gradients are
  summed over micro-batches and processes, never divided by their number;
- `step() -> grad norm` once per optimizer step (a step with a non-finite norm is not applied);
- `state_dict()` (full weights: collective under ZeRO-3), `hf_state_dict()` (what the HF export
  writes; None: the module's own), `save_state(dir)` / `load_state(dir)` (optimizer, scheduler, or
  DeepSpeed's own checkpoint, under `<checkpoint>/trainer/`), `autocast()`, `lr`, `close()`.

Gradients over several processes: `reduce="ddp"` (SFT under torchrun: DDP averages in backward, the
loss is scaled by the world size) or `reduce="sum"` (the RL learners: one flat all-reduce at `step`,
so ranks may run different numbers of micro-batches).

    >>> sorted(STRATEGIES)
    ['deepspeed', 'torch']
    >>> # s = STRATEGIES[cfg.train.strategy](device, "fp32", name="policy"); s.setup(model, opt, sched)
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path

from apr.net import free_port
from apr.train import collectives
from apr.train.device import autocast

STRATEGIES: dict[str, type[Strategy]] = {}
DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint, under a checkpoint's trainer/


def register(name: str):
    def deco(cls):
        STRATEGIES[name] = cls
        cls.name = name
        return cls
    return deco


def init_deepspeed(device_type: str, backend: str, single_process: bool = False) -> None:
    """Import deepspeed and join (or start) its process group; unset launcher variables default to
    one process (rank 0 of 1 on this host, a free port). `single_process` (the RL learner) sets them
    to a world of one whatever the environment holds (a Ray actor inherits the variables of the
    process that started Ray, e.g. a MASTER_PORT that process already listens on), unless a process
    group (`apr.train.collectives.join`, `dist.num_learners` > 1) already exists: then DeepSpeed
    joins it, and on CPU it reduces through gloo (no shared-memory op to build)."""
    import torch.distributed as dist

    if single_process and not dist.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if device_type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed
    import deepspeed.ops

    if device_type == "cpu" and (int(os.environ["WORLD_SIZE"]) == 1 or single_process):
        # one process needs no shared-memory allreduce: skip its ~1 min C++ build on first use
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def launch_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process: the process group's, else the launcher's variables."""
    if collectives.world_size() > 1:
        return collectives.rank(), collectives.world_size(), int(os.environ.get("LOCAL_RANK", 0))
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


class Strategy:
    """Placement, precision and the common pieces; subclasses wrap the model and its optimizer."""

    name = "base"
    saves_weights = False  # whether save_state keeps the module's weights (else the HF files hold them)
    needs_matched_micro_batches = False  # whether every rank must run as many micro-batches per step

    def __init__(self, device, precision: str, *, name: str = "model", zero_stage: int = 2, compile: bool = False,
                 reduce: str = "ddp", grad_clip: float = 0.0, bf16_weights: bool = False) -> None:
        self.device, self.precision, self.label = device, precision, name
        self.zero_stage, self.compile, self.reduce = zero_stage, compile, reduce
        self.grad_clip, self.bf16_weights = grad_clip, bf16_weights
        self.rank, self.world_size, self.local_rank = launch_rank()
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.autocast = autocast(precision, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def hf_state_dict(self) -> dict | None:
        return None

    def barrier(self) -> None:
        collectives.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        return collectives.all_reduce_sum(values)

    def close(self) -> None:
        import torch.distributed as dist

        if getattr(self, "owns_group", False) and dist.is_initialized():
            dist.destroy_process_group()


@register("torch")
class TorchStrategy(Strategy):
    """Plain torch AdamW; with several processes DDP (`reduce="ddp"`) or a summed flat all-reduce (`"sum"`);
    `compile`: torch.compile the forward, falling back to eager (with a warning) where compiling fails."""

    def setup(self, model, optimizer, scheduler) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        self.module = self.model = model.to(self.device)
        self.optimizer, self.scheduler = optimizer, scheduler
        if self.world_size > 1 and self.reduce == "ddp":
            if not dist.is_initialized():
                dist.init_process_group(self.backend)
                self.owns_group = True
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        self.eager = self.model
        if self.compile:
            import torch

            self.model = torch.compile(self.model)

    def forward_backward(self, loss_fn, is_last: bool):
        """`loss_fn(self.model)` and its backward (DDP syncs only at the step's last micro-batch)."""
        is_ddp = self.world_size > 1 and self.reduce == "ddp"
        with contextlib.nullcontext() if is_last or not is_ddp else self.eager.no_sync():
            out = self._forward(loss_fn)
            loss = out[0] if isinstance(out, tuple) else out
            (loss * self.world_size if is_ddp else loss).backward()  # DDP averages gradients over processes
        return out

    def _forward(self, loss_fn):
        try:
            return loss_fn(self.model)
        except Exception as e:  # compiling happens at the first forward: fall back to eager if it fails
            if self.model is self.eager or not _is_compile_error(e):
                raise
            warnings.warn(f"train.compile: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
                          f"training runs eager", stacklevel=3)
            self.model = self.eager
            return loss_fn(self.model)

    def step(self) -> float:
        import torch

        if self.reduce == "sum" and collectives.world_size() > 1:  # each rank's loss carries the global denominator
            collectives.all_reduce_grads([p for p in self.module.parameters() if p.requires_grad])
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
        if torch.isfinite(norm):  # else never applied (the same norm on every rank): the trainer counts it
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save_state(self, path: Path) -> None:
        import torch

        if self.is_main:
            Path(path).mkdir(parents=True, exist_ok=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       Path(path) / f"{self.label}_optim.pt")

    def load_state(self, path: Path) -> None:
        import torch

        state = torch.load(Path(path) / f"{self.label}_optim.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _is_compile_error(e: Exception) -> bool:
    """An error of torch.compile's machinery (dynamo, inductor, the C++ toolchain), not of the model."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(e).__mro__)


@register("deepspeed")
class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO (`zero_stage`) around our AdamW (DeepSpeed's own optimizers JIT-compile C++ for ~80 s);
    on CPU the `cpu` accelerator and gloo. Precision is our autocast over fp32 weights, or bf16 weights
    with fp32 master weights in the optimizer (`bf16_weights`, CUDA only). One accumulation step as far
    as DeepSpeed knows: `forward_backward` marks the real boundary, so the optimizer steps once per step
    however many micro-batches it had; over several processes DeepSpeed averages the gradients (the
    loss is scaled by the world size to make that mean the step's sum)."""

    saves_weights = True  # DeepSpeed's checkpoint holds the module (and, under ZeRO-3, its shards)
    # ZeRO-2/3 reduce gradients inside every backward: all ranks must run as many micro-batches
    needs_matched_micro_batches = True

    def ds_config(self) -> dict:
        return {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "train_batch_size": self.world_size,
            "gradient_clipping": self.grad_clip,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.bf16_weights and self.device.type == "cuda"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def setup(self, model, optimizer, scheduler) -> None:
        init_deepspeed(self.device.type, self.backend, single_process=self.reduce == "sum")
        import deepspeed

        self.rank, self.world_size, self.local_rank = launch_rank()
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(self.device), optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config())
        self.module = self.model.module

    def zero_grad(self) -> None:
        pass  # DeepSpeed clears the gradients in step()

    def forward_backward(self, loss_fn, is_last: bool):
        out = loss_fn(self.model)
        loss = out[0] if isinstance(out, tuple) else out
        self.model.set_gradient_accumulation_boundary(is_last)
        self.model.backward(loss * self.world_size if self.world_size > 1 else loss, scale_wrt_gas=False)
        return out

    def step(self) -> float:
        # ZeRO 1-3 (and bf16) record the norm they clip with; plain stage 0 leaves it to us
        before = _grad_norm(self.module) if self.zero_stage == 0 else float("nan")
        if self.zero_stage == 0 and not math.isfinite(before):  # never applied: the trainer counts it
            self.module.zero_grad(set_to_none=True)
            return before
        self.model.step()
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else before

    def state_dict(self) -> dict:
        """Full weights (gathered from the shards under ZeRO-3: a collective)."""
        if self.zero_stage == 3:
            return self.model._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    def hf_state_dict(self) -> dict | None:
        if self.zero_stage < 3 and not self.ds_config()["bf16"]["enabled"]:
            return None
        return {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict().items()}

    def save_state(self, path: Path) -> None:
        self.model.save_checkpoint(str(Path(path) / DEEPSPEED_DIR), tag=self.label, save_latest=False)

    def load_state(self, path: Path) -> None:
        loaded, _ = self.model.load_checkpoint(str(Path(path) / DEEPSPEED_DIR), tag=self.label)
        if loaded is None:
            raise RuntimeError(f"deepspeed found no {self.label!r} state in {Path(path) / DEEPSPEED_DIR}")

    def close(self) -> None:
        # The process group stays: DeepSpeed caches its groups at module level, and a second
        # DeepSpeed run in this process (tests, notebooks) must find the same group alive.
        if hasattr(self.model, "destroy"):
            self.model.destroy()


def _grad_norm(module) -> float:
    import torch

    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
