"""Browse the file system for `.gguf` model files (the model picker's "Browse…")."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Footer, Input, Label


class GGUFTree(DirectoryTree):
    """A directory tree that shows folders (not hidden ones) and `.gguf` files only."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or (p.suffix.lower() == ".gguf" and p.is_file()):
                    out.append(p)
            except OSError:  # a broken link or a folder we may not read
                continue
        return out


class FilePickerScreen(ModalScreen[str | None]):
    """Pick a `.gguf` file: walk the tree from `start`, or type a folder or file path.
    Dismisses with the file's path, or None."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("backspace", "up", "Parent folder", show=True)]

    def __init__(self, start: Path | None = None) -> None:
        super().__init__()
        self.start = (start or Path.home()).expanduser()

    def compose(self) -> ComposeResult:
        with Vertical(id="files-box", classes="panel-box"):
            yield Label("Open a .gguf model file", classes="box-title")
            yield Label("Enter open · Backspace parent folder · type a path below · Esc close",
                        classes="keys")
            yield Input(str(self.start), id="files-path", placeholder="a folder or a .gguf file")
            yield GGUFTree(self.start, id="files-tree")
            yield Label("", id="files-error", classes="error-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(GGUFTree).focus()

    def _go(self, folder: Path) -> None:
        tree = self.query_one(GGUFTree)
        tree.path = folder
        self.query_one("#files-path", Input).value = str(folder)
        self.query_one("#files-error", Label).update("")

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(str(event.path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        p = Path(event.value.strip()).expanduser()
        if p.is_dir():
            self._go(p)
            self.query_one(GGUFTree).focus()
        elif p.is_file() and p.suffix.lower() == ".gguf":
            self.dismiss(str(p))
        else:
            self.query_one("#files-error", Label).update(f"not a folder or a .gguf file: {p}")

    def action_up(self) -> None:
        """Show the parent folder."""
        if isinstance(self.focused, Input):
            self.focused.action_delete_left()
            return
        tree = self.query_one(GGUFTree)
        self._go(Path(tree.path).resolve().parent)

    def action_close(self) -> None:
        self.dismiss(None)
