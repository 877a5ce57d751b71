"""Where and in what precision the detectors run.

``device="auto"`` picks CUDA when present, else CPU. ``precision="auto"`` picks bfloat16 where
the hardware does it natively — every CUDA GPU we target, and CPUs with AMX tiles (Sapphire
Rapids and later), where oneDNN runs bf16 convolutions about twice as fast as fp32 — and fp32
everywhere else, where emulated bf16 would be slower than fp32. Scores in bf16 differ from fp32
by well under 1 % (see ``benchmarks/scoring.py``), far below what calibration can resolve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` (or any torch device string) into a device, with a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return resolved


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX tiles, where bf16 convolutions beat fp32 (private torch probe)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # the probe is private API; absence or failure just means "no"
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA and AMX CPUs, ``"fp32"`` otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when ``precision == "bf16"``, a no-op otherwise."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def default_batch_size(device: torch.device) -> int:
    """Patches per forward pass: small on CPU (cache-bound), large on GPU (occupancy-bound)."""
    return 256 if device.type == "cuda" else 4
