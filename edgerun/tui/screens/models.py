"""Model picker: recently used files, catalog models and local .gguf files, a file-system
browser for any other .gguf, pull with progress, switch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, ProgressBar

from edgerun.tui.widgets.stats import fmt_bytes

PullFn = Callable[..., Path]


@dataclass(frozen=True)
class ModelRow:
    """One model the user can pick."""

    spec: str  # catalog name or file path
    name: str
    kind: str  # architecture, or "local file"
    size: int
    downloaded: bool
    description: str = ""


def list_models() -> list[ModelRow]:
    """Recently used model files, then catalog entries (downloaded or not), then other .gguf
    files in the models dir."""
    from edgerun.catalog import load_catalog, local_models, local_path
    from edgerun.tui.settings import recent_models

    rows: list[ModelRow] = []
    known: set[Path] = set()
    for r in recent_models():
        p = Path(r)
        rows.append(ModelRow(f"recent:{p}", p.stem, "recent", p.stat().st_size, True, str(p)))
    for name, e in sorted(load_catalog().items()):
        p = local_path(e)
        ok = p.is_file() and p.stat().st_size == e.bytes
        known.add(p.resolve())
        rows.append(ModelRow(name, name, e.architecture, e.bytes, ok, e.description))
    for p in local_models():
        if p.resolve() not in known:
            rows.append(ModelRow(str(p), p.stem, "local file", p.stat().st_size, True, str(p)))
    return rows


class ModelPickerScreen(ModalScreen[str | None]):
    """Pick a model; a catalog model not yet downloaded is pulled here first.
    Dismisses with the model spec to switch to, or None."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("enter", "choose", "Use model"),
        Binding("p", "pull", "Pull only"),
        Binding("b", "browse", "Browse files…"),
    ]

    def __init__(self, current: str = "", pull_fn: PullFn | None = None) -> None:
        super().__init__()
        self.current = current
        self.pull_fn = pull_fn
        self.rows: dict[str, ModelRow] = {}
        self.pulling: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="models-box", classes="panel-box"):
            yield Label("Models", classes="box-title")
            yield Label("Enter use (pulls it first if needed) · p pull only · b browse files · Esc close",
                        classes="keys")
            yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="model-desc", classes="hint")
            yield Label("", id="pull-label")
            yield ProgressBar(total=100, show_eta=False, id="pull-bar")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(" ", "Model", "Type", "Size", "Status")
        self.query_one("#pull-bar").display = False
        self.refresh_rows()
        table.focus()

    def refresh_rows(self) -> None:
        """Re-read the catalog and the models directory."""
        table = self.query_one(DataTable)
        table.clear()
        self.rows = {}
        for r in list_models():
            self.rows[r.spec] = r
            mark = "●" if self.current in (r.spec, r.name, r.description) else " "
            status = "downloaded" if r.downloaded else "pull to use"
            table.add_row(mark, r.name, r.kind, fmt_bytes(r.size), status, key=r.spec)

    def _selected(self) -> ModelRow | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self.rows.get(str(key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = self.rows.get(str(event.row_key.value)) if event.row_key is not None else None
        self.query_one("#model-desc", Label).update(row.description if row else "")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_choose()

    def action_choose(self) -> None:
        row = self._selected()
        if row is None or self.pulling:
            return
        if row.downloaded:
            self.dismiss(row.spec.removeprefix("recent:"))
        else:
            self.start_pull(row, then_use=True)

    def action_browse(self) -> None:
        """Pick any .gguf file on disk."""
        from edgerun.catalog import models_dir
        from edgerun.tui.screens.files import FilePickerScreen

        start = models_dir()
        self.app.push_screen(FilePickerScreen(start if start.is_dir() else None),
                             lambda path: self.dismiss(path) if path else None)

    def action_pull(self) -> None:
        row = self._selected()
        if row is None or self.pulling:
            return
        if row.downloaded:
            self.notify(f"{row.name} is already downloaded", markup=False)
        else:
            self.start_pull(row, then_use=False)

    def action_close(self) -> None:
        if self.pulling:
            self.notify("A download is running; it continues in the background.")
        self.dismiss(None)

    def start_pull(self, row: ModelRow, then_use: bool) -> None:
        """Download a catalog model with a progress bar."""
        self.pulling = row.name
        self.query_one("#pull-bar", ProgressBar).display = True
        self.query_one("#pull-bar", ProgressBar).update(total=row.size, progress=0)
        self.query_one("#pull-label", Label).update(f"Pulling {row.name}…")
        self._pull_worker(row, then_use)

    @work(thread=True, exclusive=True, group="pull")
    def _pull_worker(self, row: ModelRow, then_use: bool) -> None:
        from edgerun.catalog import pull

        fn = self.pull_fn or pull

        def progress(done: int, total: int, stage: str) -> None:
            self.app.call_from_thread(self._show_progress, row.name, done, total)

        try:
            fn(row.name, progress=progress)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.app.call_from_thread(self._pull_done, row, then_use, str(e))
            return
        self.app.call_from_thread(self._pull_done, row, then_use, None)

    def _show_progress(self, name: str, done: int, total: int) -> None:
        if not self.is_attached:
            return
        self.query_one("#pull-bar", ProgressBar).update(total=total or None, progress=done)
        self.query_one("#pull-label", Label).update(
            f"Pulling {name}: {fmt_bytes(done)} / {fmt_bytes(total)}" if total else f"Pulling {name}…")

    def _pull_done(self, row: ModelRow, then_use: bool, error: str | None) -> None:
        self.pulling = None
        if error:
            self.app.notify(f"Pull failed: {error}", severity="error", timeout=10, markup=False)
        else:
            self.app.notify(f"Pulled {row.name}", markup=False)
        if not self.is_attached:
            return
        self.query_one("#pull-bar", ProgressBar).display = False
        self.query_one("#pull-label", Label).update("")
        if error:
            return
        if then_use:
            self.dismiss(row.spec)
        else:
            self.refresh_rows()
