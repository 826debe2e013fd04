"""Pick the architecture class from `general.architecture`."""

from __future__ import annotations

from edgerun.models.base import ModelLoadError, Transformer
from edgerun.models.gemma3 import Gemma3
from edgerun.models.llama import Llama, Mistral
from edgerun.models.phi3 import Phi3
from edgerun.models.qwen2 import Qwen2, Qwen2MoE
from edgerun.models.qwen3 import Qwen3, Qwen3MoE

ARCHITECTURES: dict[str, type[Transformer]] = {c.arch: c for c in (Llama, Mistral, Qwen2, Qwen2MoE, Qwen3, Qwen3MoE, Phi3, Gemma3)}


def model_class(arch: str) -> type[Transformer]:
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"unsupported architecture '{arch}' (supported: "
                             f"{', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[arch]
