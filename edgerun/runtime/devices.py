"""Device probes: CPU cores and RAM (psutil), NVIDIA GPUs and their VRAM (pynvml).

A machine without an NVIDIA GPU, driver or library simply reports no GPUs: probing never raises.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CPUInfo:
    """Host CPU and memory."""

    physical_cores: int
    logical_cores: int
    ram_total: int  # bytes
    ram_available: int  # bytes


@dataclass(frozen=True)
class GPUInfo:
    """One NVIDIA GPU as NVML sees it."""

    index: int
    name: str
    vram_total: int  # bytes
    vram_free: int  # bytes
    utilization: int  # percent, 0..100 (-1 when NVML cannot say)


@dataclass(frozen=True)
class Devices:
    """Everything the placement planner needs to know about the machine."""

    cpu: CPUInfo
    gpus: list[GPUInfo] = field(default_factory=list)

    @property
    def vram_free(self) -> int:
        """Free VRAM of the first GPU in bytes (0 without a GPU)."""
        return self.gpus[0].vram_free if self.gpus else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def probe_cpu() -> CPUInfo:
    """Cores and RAM of this host."""
    try:
        import psutil

        logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        physical = psutil.cpu_count(logical=False) or logical
        vm = psutil.virtual_memory()
        return CPUInfo(int(physical), int(logical), int(vm.total), int(vm.available))
    except Exception:  # pragma: no cover - psutil is a dependency, but never fail a probe
        n = os.cpu_count() or 1
        return CPUInfo(n, n, 0, 0)


def probe_gpus() -> list[GPUInfo]:
    """NVIDIA GPUs through NVML; an empty list when there is no GPU, driver or library."""
    try:
        import pynvml
    except Exception:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    out: list[GPUInfo] = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                util = -1
            out.append(GPUInfo(i, str(name), int(mem.total), int(mem.free), util))
    except Exception:
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out


def probe() -> Devices:
    """CPU and GPUs of this machine."""
    return Devices(probe_cpu(), probe_gpus())
