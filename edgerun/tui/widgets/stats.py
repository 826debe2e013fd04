"""The live side panel: generation speed, context, machine load and layer placement."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Label, ProgressBar, Sparkline, Static


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KB' style sizes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _rows(rows: list[tuple[str, str]]) -> Table:
    t = Table.grid(padding=(0, 1), expand=True)
    t.add_column(style="dim", no_wrap=True)
    t.add_column(justify="right", no_wrap=True)
    for k, v in rows:
        t.add_row(k, v)
    return t


def placement_text(placement: dict[int, dict[str, str]], width: int = 24, remote: bool = False) -> Text:
    """Two rows (attn, ffn) of one cell per layer: G on the GPU (green), C on the CPU (blue)."""
    out = Text()
    if not placement:
        out.append("decided by the server" if remote else "not reported yet", style="dim")
        return out
    layers = sorted(placement)
    chunk = max(8, (width - 6) // 9 * 8)
    for start in range(0, len(layers), chunk):
        part = layers[start:start + chunk]
        out.append(f"layers {part[0]}–{part[-1]}\n", style="dim")
        for kind in ("attn", "ffn"):
            out.append(f"{kind:<5}", style="dim")
            for j, i in enumerate(part):
                if j and j % 8 == 0:
                    out.append(" ")
                dev = placement[i].get(kind, "cpu")
                out.append("G" if dev == "gpu" else "C",
                           style="bold #22c55e" if dev == "gpu" else "#60a5fa")
            out.append("\n")
    n_gpu = sum(1 for p in placement.values() for v in p.values() if v == "gpu")
    out.append("G", style="bold #22c55e")
    out.append(" GPU  ", style="dim")
    out.append("C", style="#60a5fa")
    out.append(" CPU · ", style="dim")
    out.append("all on CPU" if n_gpu == 0 else f"{n_gpu}/{2 * len(layers)} on GPU", style="dim")
    return out


def context_bar(used: int, total: int, width: int = 30) -> Text:
    """`used / total` as a bar that goes green, then yellow past 70 %, red past 90 %."""
    out = Text()
    if not total:
        out.append("context –", style="dim")
        return out
    frac = min(max(used / total, 0.0), 1.0)
    style = "#22c55e" if frac < 0.7 else ("#eab308" if frac < 0.9 else "bold #ef4444")
    filled = round(frac * width)
    out.append("█" * filled, style=style)
    out.append("░" * (width - filled), style="#3f3f46")
    out.append(f"\n{used} / {total} tok · {frac:.0%}", style=style if frac >= 0.7 else "dim")
    return out


class StatsPanel(VerticalScroll):
    """Side panel fed by the app: `set_model`, `set_progress`, `set_generation`, `set_system`."""

    def compose(self):
        yield Label("Model", classes="section")
        yield Static("", id="model-name")
        yield Static("", id="load-stage")
        yield ProgressBar(total=None, show_eta=False, id="load-bar")
        yield Label("Generation", classes="section")
        yield Static(_rows(self._gen_rows({})), id="gen")
        yield Label("tok/s over the reply", classes="hint-small")
        yield Sparkline([], id="tps-spark")
        yield Label("Context", classes="section")
        yield Static(context_bar(0, 0), id="ctx-bar")
        yield Label("System", classes="section")
        yield Static(_rows([("CPU", "–"), ("RAM", "–"), ("GPU", "–"), ("VRAM", "–")]), id="sys")
        yield Label("Placement", classes="section")
        yield Static(placement_text({}), id="placement")

    @staticmethod
    def _gen_rows(g: dict[str, Any]) -> list[tuple[str, str]]:
        tps = g.get("tok_s")
        ttft = g.get("ttft_s")
        return [
            ("tok/s", f"{tps:.1f}" if tps else "–"),
            ("TTFT", f"{ttft * 1000:.0f} ms" if ttft else "–"),
            ("prompt", f"{g['prompt']} tok" if g.get("prompt") is not None else "–"),
            ("completion", f"{g['completion']} tok" if g.get("completion") is not None else "–"),
        ]

    def set_model(self, name: str, backend: str = "", note: str = "") -> None:
        """Show the model's name, where it runs and a note (e.g. "completion mode")."""
        text = Text(name, style="bold", no_wrap=True, overflow="ellipsis")
        if backend:
            text.append(f"\n{backend}", style="dim")
        if note:
            text.append(f"\n{note}", style="bold #eab308")
        self.query_one("#model-name", Static).update(text)

    def set_progress(self, done: int, total: int, stage: str) -> None:
        """Show model load/pull progress; stage "ready" hides the bar."""
        bar = self.query_one("#load-bar", ProgressBar)
        label = self.query_one("#load-stage", Static)
        if stage == "ready":
            bar.display = False
            label.update(Text("● ready", style="green"))
            return
        if stage == "error":
            bar.display = False
            label.update(Text("● failed to load", style="bold red"))
            return
        bar.display = True
        words = {"resolve": "finding model…", "download": "downloading…", "load": "loading…"}
        msg = words.get(stage, stage)
        if stage == "download" and total:
            msg = f"downloading {fmt_bytes(done)} / {fmt_bytes(total)}"
        label.update(Text(msg, style="yellow"))
        if total:
            bar.update(total=total, progress=done)
        else:
            bar.update(total=None)

    def set_generation(self, g: dict[str, Any]) -> None:
        """Update tok/s, TTFT, token counts and the context bar."""
        self.query_one("#gen", Static).update(_rows(self._gen_rows(g)))
        # a fixed width: the panel is 34 cells wide in app.tcss, and a width read from the layout
        # changes with the scrollbar (snapshots differed by a cell)
        self.query_one("#ctx-bar", Static).update(context_bar(int(g.get("ctx_used") or 0),
                                                              int(g.get("n_ctx") or 0), 30))

    def set_speed_history(self, samples: list[float]) -> None:
        """The reply's tokens per second, one sample per screen update, for the sparkline."""
        self.query_one("#tps-spark", Sparkline).data = list(samples)


    def toggle(self) -> None:
        """Show or hide the panel."""
        self.display = not self.display

    def set_system(self, s: dict[str, str]) -> None:
        """Update CPU, RAM, GPU and VRAM readings (already formatted)."""
        rows = [(k, s.get(k, "–")) for k in ("CPU", "RAM", "GPU", "VRAM")]
        self.query_one("#sys", Static).update(_rows(rows))

    def set_placement(self, placement: dict[int, dict[str, str]], remote: bool = False) -> None:
        """Show the per-layer attention/FFN placement (`remote`: a server decides it)."""
        self.query_one("#placement", Static).update(placement_text(placement, remote=remote))


class SystemProbe:
    """CPU/RAM through psutil, GPU/VRAM through pynvml when there is an NVIDIA GPU."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        psutil.cpu_percent(None)
        self._nvml: Any = None
        self._gpu: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._nvml = pynvml
                self._gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no driver, no library, no device: all mean "no GPU"
            self._nvml = None

    def sample(self) -> dict[str, str]:
        """One reading, formatted for the panel."""
        ps = self._psutil
        vm = ps.virtual_memory()
        out = {
            "CPU": f"{ps.cpu_percent(None):.0f} %",
            "RAM": f"{fmt_bytes(self._proc.memory_info().rss)} · {vm.percent:.0f}%",
            "GPU": "no GPU",
            "VRAM": "–",
        }
        if self._nvml is not None:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._gpu)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self._gpu)
                out["GPU"] = f"{util.gpu} %"
                out["VRAM"] = f"{fmt_bytes(mem.used)} / {fmt_bytes(mem.total)}"
            except Exception:  # noqa: BLE001
                out["GPU"] = "n/a"
        return out
