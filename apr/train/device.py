"""Where a trainer runs and in what precision: the device, whether bf16 is native there, autocast.

    >>> select_device("cpu").type, resolve_precision("fp32", select_device("cpu"))
    ('cpu', 'fp32')
"""

from __future__ import annotations

import contextlib

from apr.config import check


def select_device(name: str, local_rank: int = 0, field: str = "train.device"):
    """`auto` | `cpu` | `cuda` (process `local_rank`'s GPU); `cuda` without a visible GPU is refused, naming `field`."""
    import torch

    check(name in ("auto", "cpu", "cuda"), field, name, "auto, cpu or cuda")
    check(name != "cuda" or torch.cuda.is_available(), field, name, "auto or cpu (no CUDA device is visible)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def has_native_bf16(device) -> bool:
    """Whether bf16 matmuls run in hardware here: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16.
    Elsewhere (e.g. AVX2-only CPUs) torch emulates them: measured ~40x slower than fp32 on a 2-core AMD EPYC."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(requested: str, device, who: str = "train") -> str:
    """`train.precision` on this device: `auto` is bf16 where it is native, else fp32; an explicit bf16
    where it is emulated is kept, with a warning (it is many times slower than fp32 there)."""
    native = has_native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        print(f"[{who}] warning: train.precision=bf16 on a device without native bf16 (no AMX / AVX512-BF16): "
              "autocast is emulated, ~40x slower than fp32 here; train.precision=auto picks fp32", flush=True)
    return requested


def autocast(precision: str, device):
    """A factory of autocast contexts: bf16 autocast under `bf16`, else a no-op."""
    import torch

    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
