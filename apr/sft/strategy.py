"""Training strategies, registered by name: `torch` (single process, or DDP under torchrun) and
`deepspeed` (ZeRO 0-3 around a client `torch.optim.AdamW`; deepspeed imported lazily).

A strategy owns the process group, the wrapped model, the optimizer and the scheduler. The
trainer sees one small interface: `setup`, `forward_backward` per micro-batch, `step` per
optimizer step, `save_state`/`load_state`, and a few collectives.

    >>> sorted(STRATEGIES)
    ['deepspeed', 'torch']
    >>> # strategy = STRATEGIES[cfg.train.strategy](cfg.train, cfg.optim); strategy.setup(model, total_steps)
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import warnings
from pathlib import Path

from apr.config import check
from apr.sft.config import OptimConfig, TrainConfig
from apr.sft.optim import build_optimizer, build_scheduler
from apr.sft.packing import PackedBatch

STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str):
    def deco(cls):
        STRATEGIES[name] = cls
        cls.name = name
        return cls
    return deco


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now ("": on every interface), for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_deepspeed(device_type: str, backend: str, single_process: bool = False) -> None:
    """Import deepspeed and join (or start) its process group; unset launcher variables default to
    one process (rank 0 of 1 on this host, a free port). `single_process` (the RL learner) sets them
    to a world of one whatever the environment holds (a Ray actor inherits the variables of the
    process that started Ray, e.g. a MASTER_PORT that process already listens on), unless the
    learners' process group (`apr.rl.group.join`, `dist.num_learners` > 1) already exists: then
    DeepSpeed joins it, and on CPU it reduces through gloo (no shared-memory op to build)."""
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


def has_native_bf16(device) -> bool:
    """Whether bf16 matmuls run in hardware here: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16.
    Elsewhere (e.g. AVX2-only CPUs) torch emulates them: measured ~40x slower than fp32 on a 2-core AMD EPYC."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(requested: str, device) -> str:
    """`train.precision` on this device: `auto` is bf16 where it is native, else fp32; an explicit bf16
    where it is emulated is kept, with a warning (it is many times slower than fp32 there)."""
    native = has_native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        print("[sft] warning: train.precision=bf16 on a device without native bf16 (no AMX / AVX512-BF16): "
              "autocast is emulated, ~40x slower than fp32 here; train.precision=auto picks fp32", flush=True)
    return requested


class Strategy:
    """Process placement and the common pieces; subclasses wrap model and optimizer."""

    name = "base"

    def __init__(self, train: TrainConfig, optim: OptimConfig) -> None:
        import torch

        self.train_cfg, self.optim_cfg = train, optim
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        check(train.device != "cuda" or torch.cuda.is_available(), "train.device", train.device,
              "auto or cpu (no CUDA device is visible)")
        use_cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        self.backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(train.precision, self.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def loss(self, model, batch: PackedBatch, num_targets: int):
        """Summed token loss of `batch` divided by the step's `num_targets` over all processes."""
        import torch

        batch = batch.to(self.device)
        with self.autocast():
            out = model(**batch.model_inputs(), num_items_in_batch=torch.tensor(max(num_targets, 1)))
        return out.loss

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()

    def export_state_dict(self) -> dict | None:
        """Full parameters for the HF export (collective under ZeRO-3); None: the module's own."""
        return None

    def close(self) -> None:
        import torch.distributed as dist

        if getattr(self, "owns_group", False) and dist.is_initialized():
            dist.destroy_process_group()


@register("torch")
class TorchStrategy(Strategy):
    """Plain torch; DDP when launched by torchrun (WORLD_SIZE > 1)."""

    def setup(self, model, total_steps: int | None, budget=None) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        self.module = model.to(self.device)
        self.optimizer = build_optimizer(model, self.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg, total_steps, budget)
        self.model = model
        if self.world_size > 1:
            if not dist.is_initialized():
                dist.init_process_group(self.backend)
                self.owns_group = True
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        self.eager = self.model
        if self.train_cfg.compile:
            import torch

            self.model = torch.compile(self.model)

    def loss(self, model, batch: PackedBatch, num_targets: int):
        try:
            return super().loss(model, batch, num_targets)
        except Exception as e:  # compiling happens at the first forward: fall back to eager if it fails
            if model is self.eager or not _is_compile_error(e):
                raise
            warnings.warn(f"train.compile: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
                          f"training runs eager", stacklevel=2)
            self.model = self.eager
            return super().loss(self.model, batch, num_targets)

    def forward_backward(self, batch: PackedBatch, num_targets: int, is_last: bool):
        """Accumulate gradients of one micro-batch; returns its share of the step loss (detached)."""
        sync = is_last or self.world_size == 1
        with contextlib.nullcontext() if sync else self.eager.no_sync():
            loss = self.loss(self.model, batch, num_targets)
            (loss * self.world_size).backward()  # DDP averages gradients over processes
        return loss.detach()

    def step(self) -> float:
        import torch

        clip = self.optim_cfg.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_state(self, path: Path) -> None:
        import torch

        if self.is_main:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       path / "optim.pt")

    def load_state(self, path: Path) -> None:
        import torch

        state = torch.load(path / "optim.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _is_compile_error(e: Exception) -> bool:
    """An error of torch.compile's machinery (dynamo, inductor, the C++ toolchain), not of the model."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(e).__mro__)


@register("deepspeed")
class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO (`train.zero_stage`) with our AdamW (DeepSpeed's own optimizers JIT-compile
    C++ for ~80 s); on CPU the `cpu` accelerator and gloo. Precision stays our autocast."""

    def _init_distributed(self) -> None:
        init_deepspeed(self.device.type, self.backend)

    def ds_config(self) -> dict:
        t = self.train_cfg
        return {
            "train_micro_batch_size_per_gpu": t.batch_rows,
            "gradient_accumulation_steps": t.grad_accum_steps,
            "train_batch_size": t.batch_rows * t.grad_accum_steps * self.world_size,
            "gradient_clipping": self.optim_cfg.grad_clip,
            "zero_optimization": {"stage": t.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def setup(self, model, total_steps: int | None, budget=None) -> None:
        self._init_distributed()
        import deepspeed

        model = model.to(self.device)
        optimizer = build_optimizer(model, self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg, total_steps, budget)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config())
        self.module = self.model.module

    def forward_backward(self, batch: PackedBatch, num_targets: int, is_last: bool):
        loss = self.loss(self.model, batch, num_targets)
        # the loss is already normalised by the step's targets: no extra 1/grad_accum_steps
        self.model.backward(loss * self.world_size, scale_wrt_gas=False)
        self.model.step()  # optimizer, clipping and scheduler run at the accumulation boundary
        return loss.detach()

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_state(self, path: Path) -> None:
        self.model.save_checkpoint(str(path), tag="deepspeed")

    def load_state(self, path: Path) -> None:
        loaded, _ = self.model.load_checkpoint(str(path), tag="deepspeed")
        if loaded is None:
            raise RuntimeError(f"deepspeed could not load the checkpoint state in {path}")

    def export_state_dict(self) -> dict | None:
        if self.train_cfg.zero_stage < 3:
            return None
        return self.model._zero3_consolidated_16bit_state_dict()

    def close(self) -> None:
        # The process group stays: DeepSpeed caches its groups at module level, and a second
        # DeepSpeed run in this process (tests, notebooks) must find the same group alive.
        if hasattr(self.model, "destroy"):
            self.model.destroy()
