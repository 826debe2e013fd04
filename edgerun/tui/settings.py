"""Chat settings kept between runs, per-chat overrides, recently used models, and where the
chat keeps its data."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgerun.text.sampling import SamplingParams

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
MAX_CTX = 1 << 20
RECENT_MAX = 10

# Settings a chat may override; the context size is the loaded model's, so it is global only.
CHAT_FIELDS = ("system_prompt", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
               "repeat_last_n", "seed", "max_tokens", "stop", "loop_guard")


def data_dir() -> Path:
    """The user data dir: `$EDGERUN_HOME`, else `~/.local/share/edgerun` (created on demand)."""
    env = os.environ.get("EDGERUN_HOME")
    d = Path(env).expanduser() if env else Path.home() / ".local" / "share" / "edgerun"
    d.mkdir(parents=True, exist_ok=True)
    return d


def settings_path() -> Path:
    """The JSON file the settings live in."""
    return data_dir() / "chat_settings.json"


def parse_stops(text: str) -> list[str]:
    """Stop strings typed one per line; `\\n` and `\\t` in a line stand for a newline and a tab
    (so a stop string can be "\\n\\n"). Blank lines are dropped."""
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(line.replace("\\n", "\n").replace("\\t", "\t"))
    return out


def format_stops(stops: list[str]) -> str:
    """The inverse of `parse_stops`, for the settings form."""
    return "\n".join(s.replace("\t", "\\t").replace("\n", "\\n") for s in stops)


@dataclass
class Settings:
    """What the user can change on the settings screen."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    # Ollama's chat defaults: a light penalty over the last 64 tokens keeps small models from looping.
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 0  # 0: no limit but the context
    stop: list[str] = field(default_factory=list)
    n_ctx: int = 4096
    loop_guard: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not 0 <= self.temperature <= 5:
            raise ValueError("temperature must be between 0 and 5")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")
        if not 0 <= self.top_k <= 1 << 20:
            raise ValueError("top-k must be 0 (off) or a positive integer")
        if not 0 <= self.min_p < 1:
            raise ValueError("min-p must be in [0, 1)")
        if not 0 < self.repeat_penalty <= 10:
            raise ValueError("repeat penalty must be in (0, 10] (1 is off)")
        if not 0 <= self.repeat_last_n <= MAX_CTX:
            raise ValueError("repeat window must be 0 (whole reply) or a positive integer")
        if self.seed is not None and not 0 <= self.seed < 1 << 63:
            raise ValueError("seed must be empty (random) or a non-negative integer")
        if not 0 <= self.max_tokens <= MAX_CTX:
            raise ValueError("max tokens must be 0 (up to the context) or a positive integer")
        if not 64 <= self.n_ctx <= MAX_CTX:
            raise ValueError(f"context size must be between 64 and {MAX_CTX} tokens")
        if any(not s for s in self.stop):
            raise ValueError("a stop string cannot be empty")

    def sampling_params(self, n_ctx: int = 0) -> SamplingParams:
        """These settings as `edgerun.text.sampling.SamplingParams` (imported here: it pulls
        in numpy, which the UI's import path avoids). Unlimited max tokens becomes the model's
        context size `n_ctx` (the engine stops at the end of the context anyway)."""
        from edgerun.text.sampling import SamplingParams

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                              repeat_last_n=self.repeat_last_n, seed=self.seed,
                              max_tokens=self.max_tokens or n_ctx or MAX_CTX, stop=list(self.stop))

    def overrides_from(self, base: Settings) -> dict[str, Any]:
        """The chat-level fields where `self` differs from `base` (what a chat stores)."""
        return {k: getattr(self, k) for k in CHAT_FIELDS if getattr(self, k) != getattr(base, k)}

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        """These settings with a chat's stored overrides applied (unknown or bad ones dropped:
        a chat saved by an older version must still open)."""
        out = replace(self, stop=list(self.stop))
        _assign(out, {k: v for k, v in overrides.items() if k in CHAT_FIELDS})
        try:
            out.validate()
        except ValueError:
            return replace(self, stop=list(self.stop))
        return out

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        """Read the settings file; missing, unreadable or bad values fall back to defaults."""
        path = path or settings_path()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        out = cls()
        if isinstance(raw, dict):
            _assign(out, raw)
        try:
            out.validate()
        except ValueError:
            return cls()
        return out

    def save(self, path: Path | None = None) -> Path:
        """Write the settings atomically; return the file's path."""
        path = path or settings_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path


def _assign(out: Settings, raw: dict[str, Any]) -> None:
    """Set the fields of `out` from JSON values, converting to each field's type; values that
    do not convert are skipped."""
    for f in fields(out):
        if f.name not in raw:
            continue
        v = raw[f.name]
        cur = getattr(out, f.name)
        try:
            if f.name == "seed":
                setattr(out, f.name, None if v is None else int(v))
            elif f.name == "stop":
                if isinstance(v, list) and all(isinstance(s, str) for s in v):
                    out.stop = list(v)
            elif isinstance(cur, bool):
                setattr(out, f.name, bool(v))
            else:
                setattr(out, f.name, type(cur)(v))
        except (TypeError, ValueError):
            pass


# ---- recently used models --------------------------------------------------------------------


def recent_path() -> Path:
    """Where the recently used model files are listed."""
    return data_dir() / "recent_models.json"


def recent_models() -> list[str]:
    """Model paths used lately, newest first (files that no longer exist are left out)."""
    try:
        raw = json.loads(recent_path().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in raw if isinstance(p, str) and Path(p).is_file()][:RECENT_MAX]


def remember_model(path: str) -> None:
    """Put a model file at the top of the recent list."""
    path = str(Path(path).resolve())
    items = [path] + [p for p in recent_models() if p != path]
    try:
        recent_path().write_text(json.dumps(items[:RECENT_MAX], indent=1))
    except OSError:
        pass  # a read-only home only loses the recent list
