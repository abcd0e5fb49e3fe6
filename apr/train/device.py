"""Where a trainer runs and in what precision: the device, whether bf16 is native there, autocast.

    >>> select_device("cpu").type, resolve_precision("fp32", select_device("cpu"))
    ('cpu', 'fp32')
"""

from __future__ import annotations

import contextlib
import os

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


AUTO_ENV = "APR_PRECISION_AUTO"  # bf16 | fp32: what `auto` resolves to, in every process of a run


def auto_override() -> str | None:
    """The `APR_PRECISION_AUTO` environment variable (bf16 or fp32), or None when unset or empty. It makes
    `auto` resolve one way on any machine, e.g. for a whole test-suite run (Ray actors inherit it)."""
    value = os.environ.get(AUTO_ENV, "").strip()
    check(value in ("", "bf16", "fp32"), AUTO_ENV, value, "bf16, fp32 or unset (auto: bf16 where native)")
    return value or None


def resolve_precision(requested: str, device, who: str = "train") -> str:
    """`train.precision` on this device: `auto` is bf16 where it is native, else fp32 (or what
    `APR_PRECISION_AUTO` says); an explicit bf16 where it is emulated is kept, with a warning (it is
    many times slower than fp32 there)."""
    native = has_native_bf16(device)
    forced = auto_override() if requested == "auto" else None
    if requested == "auto" and not forced:
        return "bf16" if native else "fp32"
    resolved = forced or requested
    if resolved == "bf16" and not native:
        source = f"{AUTO_ENV}=bf16" if forced else "train.precision=bf16"
        print(f"[{who}] warning: {source} on a device without native bf16 (no AMX / AVX512-BF16): "
              "autocast is emulated, ~40x slower than fp32 here; train.precision=auto picks fp32", flush=True)
    return resolved


def autocast(precision: str, device):
    """A factory of autocast contexts: bf16 autocast under `bf16`, else a no-op."""
    import torch

    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
