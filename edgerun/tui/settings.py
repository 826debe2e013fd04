"""Chat settings kept between runs, and where the chat keeps its data."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgerun.text.sampling import SamplingParams

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def data_dir() -> Path:
    """The user data dir: `$EDGERUN_HOME`, else `~/.local/share/edgerun` (created on demand)."""
    env = os.environ.get("EDGERUN_HOME")
    d = Path(env).expanduser() if env else Path.home() / ".local" / "share" / "edgerun"
    d.mkdir(parents=True, exist_ok=True)
    return d


def settings_path() -> Path:
    """The JSON file the settings live in."""
    return data_dir() / "chat_settings.json"


@dataclass
class Settings:
    """What the user can change on the settings screen."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not 0 <= self.temperature <= 5:
            raise ValueError("temperature must be between 0 and 5")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")
        if not 1 <= self.max_tokens <= 1 << 20:
            raise ValueError("max tokens must be a positive integer")

    def sampling_params(self) -> SamplingParams:
        """These settings as `edgerun.text.sampling.SamplingParams` (imported here: it pulls
        in numpy, which the UI's import path avoids)."""
        from edgerun.text.sampling import SamplingParams

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        """Read the settings file; missing, unreadable or bad values fall back to defaults."""
        path = path or settings_path()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        out = cls()
        for f in fields(cls):
            if f.name in raw:
                try:
                    setattr(out, f.name, type(getattr(out, f.name))(raw[f.name]))
                except (TypeError, ValueError):
                    pass
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
