"""Device probes: CPU cores and RAM (psutil), NVIDIA GPUs and their VRAM (pynvml).

A machine without an NVIDIA GPU, driver or library simply reports no GPUs: probing never raises.

NVML and CUDA number GPUs differently: NVML lists every GPU in PCI order, CUDA only those in
``CUDA_VISIBLE_DEVICES`` and, unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, fastest first. The planner
must read the VRAM of the GPU the CUDA backend will use (CUDA device 0), so :func:`probe_gpus`
returns NVML's GPUs in CUDA's order, matched by PCI bus id (asked of CUDA through CuPy when it
imports) or else by ``CUDA_VISIBLE_DEVICES`` (UUIDs, or indices taken in PCI order).
Under ``EDGERUN_CUDA=emulate`` the one emulated device is reported instead.
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
    uuid: str = ""  # "GPU-..." as NVML and CUDA_VISIBLE_DEVICES write it
    pci_bus_id: str = ""  # "00000000:65:00.0"


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


def _try(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception:
        return default


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def pci_key(bus_id: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of a PCI bus id such as "00000000:65:00.0" or "0000:65:00.0"."""
    try:
        dom, bus, rest = bus_id.strip().split(":")
        return int(dom, 16), int(bus, 16), int(rest.split(".")[0], 16)
    except ValueError:
        return None


def cuda_order(gpus: list[GPUInfo], cuda_bus_ids: list[str] | None = None,
               visible: str | None = None) -> list[GPUInfo]:
    """NVML's ``gpus`` in CUDA's device order (CUDA device 0 first), only those CUDA can see.

    ``cuda_bus_ids``: PCI bus id of each CUDA device, when CUDA could be asked (exact). Otherwise
    ``visible`` (``CUDA_VISIBLE_DEVICES``): entries are UUIDs (or unique prefixes, "GPU-..") or
    indices, taken in PCI order (NVML's); as CUDA does, parsing stops at the first invalid entry.
    """
    if cuda_bus_ids is not None:
        by_bus = {pci_key(g.pci_bus_id): g for g in gpus}
        return [by_bus[k] for k in map(pci_key, cuda_bus_ids) if k is not None and k in by_bus]
    if visible is None:
        return list(gpus)
    out: list[GPUInfo] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() and int(entry) < len(gpus):
            g = gpus[int(entry)]
        else:
            hits = [g for g in gpus if entry and g.uuid.startswith(entry if entry.startswith("GPU-")
                                                                  else "GPU-" + entry)]
            if len(hits) != 1:
                break
            g = hits[0]
        if g in out:
            break
        out.append(g)
    return out


def _cuda_bus_ids() -> list[str] | None:
    """PCI bus id of every CUDA device (CuPy's runtime), or None when CUDA cannot be asked."""
    try:
        import cupy

        rt = cupy.cuda.runtime
        ids = []
        for i in range(int(rt.getDeviceCount())):
            p = rt.getDeviceProperties(i)
            ids.append(f"{int(p['pciDomainID']):08X}:{int(p['pciBusID']):02X}:{int(p['pciDeviceID']):02X}.0")
        return ids
    except Exception:
        return None


def _emulated_gpu() -> GPUInfo:
    from edgerun.backends import cuda_emu

    free, total = cuda_emu.runtime.memGetInfo()
    return GPUInfo(0, "edgerun emulated CUDA device", total, free, 0, cuda_emu.EMU_UUID,
                   cuda_emu.EMU_PCI_BUS_ID)


def probe_gpus() -> list[GPUInfo]:
    """NVIDIA GPUs through NVML in CUDA's order (see the module docstring); an empty list when there
    is no GPU, driver or library."""
    if os.environ.get("EDGERUN_CUDA", "").strip().lower() == "emulate":
        return [_emulated_gpu()]
    gpus = _nvml_gpus()
    if not gpus:
        return gpus
    return cuda_order(gpus, _cuda_bus_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def _nvml_gpus() -> list[GPUInfo]:
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
            uuid = _text(_try(lambda h=h: pynvml.nvmlDeviceGetUUID(h), ""))
            bus = _text(_try(lambda h=h: pynvml.nvmlDeviceGetPciInfo(h).busId, ""))
            out.append(GPUInfo(i, str(name), int(mem.total), int(mem.free), util, uuid, bus))
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
