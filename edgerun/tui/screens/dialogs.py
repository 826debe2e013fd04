"""Small modal dialogs: ask for a line of text, confirm an action, show an error, copy."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea

from edgerun.tui.clipboard import CodeBlock
from edgerun.tui.screens import still_cursors


class InputDialog(ModalScreen[str | None]):
    """Ask for one line of text; dismisses with the text, or None on Esc."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, value: str = "", placeholder: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.prompt = prompt
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, classes="dialog-title")
            yield Input(self.value, placeholder=self.placeholder, id="dialog-input")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        still_cursors(self)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "ok":
            self.dismiss(self.query_one(Input).value.strip() or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """Yes/no question; y/Enter confirms, n/Esc declines."""

    BINDINGS = [Binding("escape,n", "answer(False)", "No"), Binding("y", "answer(True)", "Yes")]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes", variant="error", id="yes")
                yield Button("No", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ErrorDialog(ModalScreen[None]):
    """Shows a whole error (and its traceback) in a scrollable, selectable box; Esc or Enter
    closes it. Used when a model fails to load: a toast would cut the message off."""

    BINDINGS = [Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, error: str, detail: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.error = error
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.error, id="error-text", classes="error-text", markup=False)
            if self.detail.strip():
                yield TextArea(self.detail.rstrip(), id="error-detail", read_only=True, soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    def on_mount(self) -> None:
        still_cursors(self)
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class CopyDialog(ModalScreen[str | None]):
    """Pick what of a reply to copy: the whole reply or one of its code blocks (1-9 pick
    directly). Dismisses with the text to copy, or None."""

    BINDINGS = [Binding("escape", "close", "Cancel")]

    def __init__(self, reply: str, blocks: list[CodeBlock]) -> None:
        super().__init__(classes="dialog-screen")
        self.choices: list[tuple[str, str]] = [*((f"Code block {i + 1}: {b.label}", b.code)
                                                 for i, b in enumerate(blocks)),
                                               ("The whole reply (Markdown)", reply)]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Copy to the clipboard", classes="dialog-title")
            yield OptionList(*(f"{i + 1}  {label}" for i, (label, _) in enumerate(self.choices)),
                             id="copy-options")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_key(self, event: events.Key) -> None:
        if event.character and event.character.isdigit() and 1 <= int(event.character) <= len(self.choices):
            event.stop()
            self.dismiss(self.choices[int(event.character) - 1][1])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices[event.option_index][1])

    def action_close(self) -> None:
        self.dismiss(None)
