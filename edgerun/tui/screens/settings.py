"""Settings: system prompt and sampling, saved to a JSON file."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, TextArea

from edgerun.tui.screens import still_cursors
from edgerun.tui.settings import Settings


class SettingsScreen(ModalScreen[Settings | None]):
    """Edit and save the settings; dismisses with the saved Settings, or None."""

    BINDINGS = [Binding("escape", "close", "Cancel"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-box", classes="panel-box"):
            yield Label("Settings", classes="box-title")
            yield Label("System prompt", classes="field-label")
            yield TextArea(s.system_prompt, id="system-prompt", soft_wrap=True)
            with Horizontal(classes="field-row"):
                with Vertical(classes="field"):
                    yield Label("Temperature", classes="field-label")
                    yield Input(str(s.temperature), id="temperature", type="number")
                with Vertical(classes="field"):
                    yield Label("Top-p", classes="field-label")
                    yield Input(str(s.top_p), id="top-p", type="number")
                with Vertical(classes="field"):
                    yield Label("Max tokens", classes="field-label")
                    yield Input(str(s.max_tokens), id="max-tokens", type="integer")
            yield Label("", id="settings-error", classes="error-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        still_cursors(self)
        self.query_one("#system-prompt", TextArea).focus()

    def read_form(self) -> Settings:
        """The form's values as Settings; raises ValueError on bad input."""
        try:
            new = replace(
                self.settings,
                system_prompt=self.query_one("#system-prompt", TextArea).text.strip(),
                temperature=float(self.query_one("#temperature", Input).value),
                top_p=float(self.query_one("#top-p", Input).value),
                max_tokens=int(self.query_one("#max-tokens", Input).value),
            )
        except ValueError as e:
            raise ValueError("temperature and top-p must be numbers, max tokens an integer") from e
        new.validate()
        return new

    def action_save(self) -> None:
        try:
            new = self.read_form()
        except ValueError as e:
            self.query_one("#settings-error", Label).update(str(e))
            return
        try:
            new.save()
        except OSError as e:
            self.query_one("#settings-error", Label).update(f"could not save: {e}")
            return
        self.dismiss(new)

    def action_close(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)
