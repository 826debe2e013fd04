"""Settings: system prompt, sampling, limits, stop strings and the loop guard, for every chat
(saved to a JSON file) or for the current chat only (saved with the chat)."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Input, Label, TextArea

from edgerun.tui.screens import still_cursors
from edgerun.tui.settings import Settings, format_stops, parse_stops

# (field, label, input type, hint) in form order, three to a row
NUMBER_FIELDS: list[tuple[str, str, str, str]] = [
    ("temperature", "Temperature", "number", "0 = greedy"),
    ("top_p", "Top-p", "number", "1 = off"),
    ("top_k", "Top-k", "integer", "0 = off"),
    ("min_p", "Min-p", "number", "0 = off"),
    ("repeat_penalty", "Repeat penalty", "number", "1 = off"),
    ("repeat_last_n", "Repeat window", "integer", "tokens; 0 = all"),
    ("seed", "Seed", "integer", "empty = random"),
    ("max_tokens", "Max tokens", "integer", "0 = no limit"),
    ("n_ctx", "Context size", "integer", "reloads the model"),
]


def _id(name: str) -> str:
    return name.replace("_", "-")


class SettingsScreen(ModalScreen[tuple[Settings, str] | None]):
    """Edit the settings; dismisses with (settings, "all" or "chat"), or None.

    With "this chat only" checked the chat keeps the values as its own overrides and the
    global file is not written; the context size is the loaded model's and stays global.
    """

    BINDINGS = [Binding("escape", "close", "Cancel"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, settings: Settings, chat_only: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self.chat_only = chat_only

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-box", classes="panel-box"):
            yield Label("Settings", classes="box-title")
            with VerticalScroll(id="settings-form"):
                yield Label("System prompt", classes="field-label")
                yield TextArea(s.system_prompt, id="system-prompt", soft_wrap=True)
                for row in range(0, len(NUMBER_FIELDS), 3):
                    with Horizontal(classes="field-row"):
                        for name, label, kind, hint in NUMBER_FIELDS[row:row + 3]:
                            value = getattr(s, name)
                            with Vertical(classes="field"):
                                yield Label(f"{label} [dim]({hint})[/dim]", classes="field-label")
                                yield Input("" if value is None else str(value), id=_id(name), type=kind,
                                            compact=True)
                yield Label("Stop strings [dim](one per line; \\n is a newline)[/dim]", classes="field-label")
                yield TextArea(format_stops(s.stop), id="stop", soft_wrap=True)
                with Horizontal(classes="field-row"):
                    yield Checkbox("Loop guard (stop a reply that repeats itself)", s.loop_guard,
                                   id="loop-guard")
                    yield Checkbox("This chat only", self.chat_only, id="chat-only")
            yield Label("", id="settings-error", classes="error-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        still_cursors(self)
        self.query_one("#system-prompt", TextArea).focus()

    def read_form(self) -> Settings:
        """The form's values as Settings; raises ValueError naming the bad field."""
        values: dict = {}
        for name, label, kind, _ in NUMBER_FIELDS:
            raw = self.query_one(f"#{_id(name)}", Input).value.strip()
            if name == "seed" and not raw:
                values[name] = None
                continue
            try:
                values[name] = int(raw) if kind == "integer" else float(raw)
            except ValueError:
                what = "an integer" if kind == "integer" else "a number"
                raise ValueError(f"{label.lower()} must be {what}") from None
        new = replace(self.settings, system_prompt=self.query_one("#system-prompt", TextArea).text.strip(),
                      stop=parse_stops(self.query_one("#stop", TextArea).text),
                      loop_guard=self.query_one("#loop-guard", Checkbox).value, **values)
        new.validate()
        return new

    def action_save(self) -> None:
        """Validate, save (globally or for this chat) and close."""
        error = self.query_one("#settings-error", Label)
        try:
            new = self.read_form()
        except ValueError as e:
            error.update(str(e))
            return
        if self.query_one("#chat-only", Checkbox).value:
            if new.n_ctx != self.settings.n_ctx:
                error.update("the context size belongs to the loaded model: uncheck \"This chat only\" "
                             "to change it")
                return
            self.dismiss((new, "chat"))
            return
        try:
            new.save()
        except OSError as e:
            error.update(f"could not save: {e}")
            return
        self.dismiss((new, "all"))

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

