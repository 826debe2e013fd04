"""Past conversations: resume, rename, delete, export as Markdown."""

from __future__ import annotations

import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label

from edgerun.tui.history import HistoryStore, slugify
from edgerun.tui.screens.dialogs import ConfirmDialog, InputDialog


def when(ts: float, now: float | None = None) -> str:
    """A short relative time: 'just now', '5 min ago', '3 h ago', or a date."""
    d = (time.time() if now is None else now) - ts
    if d < 60:
        return "just now"
    if d < 3600:
        return f"{int(d // 60)} min ago"
    if d < 86400:
        return f"{int(d // 3600)} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ts))


class HistoryScreen(ModalScreen[int | None]):
    """Lists conversations; dismisses with the id to resume, or None."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("enter", "resume", "Resume", show=True),
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
        Binding("e", "export", "Export .md"),
    ]

    def __init__(self, store: HistoryStore, frozen_time: float | None = None) -> None:
        super().__init__()
        self.store = store
        self.frozen_time = frozen_time

    def compose(self) -> ComposeResult:
        with Vertical(id="history-box", classes="panel-box"):
            yield Label("History", classes="box-title")
            yield Label("Enter resume · r rename · d delete · e export .md · Esc close", classes="keys")
            yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="history-empty", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Title", "Model", "Msgs", "Updated")
        self.refresh_rows()
        table.focus()

    def refresh_rows(self) -> None:
        """Reload the table from the store."""
        table = self.query_one(DataTable)
        table.clear()
        convs = self.store.list()
        for c in convs:
            table.add_row(c.title, c.model or "–", str(c.n_messages), when(c.updated, self.frozen_time),
                          key=str(c.id))
        empty = self.query_one("#history-empty", Label)
        empty.update("" if convs else "No conversations yet.")
        empty.display = not convs

    def _selected(self) -> int | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return int(key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss(int(event.row_key.value))

    def action_resume(self) -> None:
        cid = self._selected()
        if cid is not None:
            self.dismiss(cid)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_rename(self) -> None:
        cid = self._selected()
        conv = self.store.get(cid) if cid is not None else None
        if conv is None:
            return

        def done(title: str | None) -> None:
            if title:
                self.store.rename(conv.id, title)
                self.refresh_rows()
                self.notify(f"Renamed to “{title}”", markup=False)

        self.app.push_screen(InputDialog("Rename conversation", conv.title), done)

    def action_delete(self) -> None:
        cid = self._selected()
        conv = self.store.get(cid) if cid is not None else None
        if conv is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.store.delete(conv.id)
                self.refresh_rows()
                self.notify(f"Deleted “{conv.title}”", markup=False)

        self.app.push_screen(ConfirmDialog(f"Delete “{conv.title}”?"), done)

    def action_export(self) -> None:
        cid = self._selected()
        conv = self.store.get(cid) if cid is not None else None
        if conv is None:
            return
        default = str(Path.cwd() / f"{slugify(conv.title)}.md")

        def done(path: str | None) -> None:
            if not path:
                return
            try:
                out = self.store.export(conv.id, Path(path))
            except OSError as e:
                self.notify(f"Export failed: {e}", severity="error", markup=False)
                return
            self.notify(f"Exported to {out}", markup=False)

        self.app.push_screen(InputDialog("Export as Markdown to", default), done)
