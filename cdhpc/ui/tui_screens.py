"""The screens of ``cdhpc status``'s terminal UI (``cdhpc.ui.tui``): a yes/no question, a text, and a
step's detail (spec, receipt, outputs, a pretrain step's latest metrics, a live log tail)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Label, Log, Static

from cdhpc.ui.status import Snapshot

TAIL_START_BYTES = 64 * 1024


class LogTail:
    """Follows one log file: each `read_new()` returns only the bytes appended since the last."""

    def __init__(self, path: str | Path | None, start_bytes: int = TAIL_START_BYTES):
        self.path = Path(path) if path else None
        self.offset: int | None = None
        self.start_bytes = start_bytes

    def read_new(self) -> str:
        """New text since the last call ('' if none); the first call returns the last
        `start_bytes` bytes. A file that shrank (rewritten) is read again from its start."""
        if self.path is None:
            return ""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if self.offset is None or size < self.offset:
                    self.offset = max(0, size - self.start_bytes) if self.offset is None else 0
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except FileNotFoundError:
            return ""
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True only on `y` or the Yes button."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TextScreen(ModalScreen[None]):
    """A scrollable text (the results table); Escape or q closes it."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "close")]

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="text"):
            yield Label(Text(self.title_text, style="bold"))
            yield Static(self.text, id="text-body")


def detail_text(snap: Snapshot, key: str) -> str:
    """Pure: a step's spec, receipt row and outputs as text."""
    spec = next(s for s in snap.steps if s["key"] == key)
    r = snap.receipts.get(key)
    parts = [
        f"{spec['stage']}/{spec['name']}  key {key}  state {snap.states[key]}",
        "",
        "spec:",
        json.dumps(spec, indent=1, sort_keys=True),
        "",
        "receipt:",
    ]
    if r is None:
        parts.append("  (none yet)")
    else:
        parts += [f"  {k}: {r[k]}" for k in r.keys() if r[k] not in (None, "", "{}")]
    j = snap.jobs.get(key)
    if j is not None:
        parts += ["", "job:"] + [f"  {k}: {j[k]}" for k in j.keys() if j[k] is not None]
    return "\n".join(parts)


def training_text(snap: Snapshot, key: str) -> str:
    """A pretrain step's last metrics.jsonl line (its tail only), '' for other stages."""
    import time

    from cdhpc.ui.training import step_progress

    spec = next(s for s in snap.steps if s["key"] == key)
    if spec["stage"] != "pretrain":
        return ""
    progress = step_progress(snap.workdir, spec, time.time())
    return f"training: {progress.text() if progress else 'no metrics.jsonl line yet'}\n"


class DetailScreen(Screen[None]):
    """One step: spec, receipt, outputs, a pretrain step's latest step/loss/tokens per s (from its
    metrics.jsonl, refreshed with the log), and a live tail of its stdout or stderr (`l` toggles)."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back"),
        Binding("l", "toggle_log", "stdout/stderr"),
        Binding("c", "app.cancel_step", "cancel step"),
    ]

    def __init__(self, snap: Snapshot, key: str, poll_s: float = 0.5):
        super().__init__()
        self.snap, self.key, self.poll_s = snap, key, poll_s
        self.spec = next(s for s in snap.steps if s["key"] == key)
        rec = snap.jobs.get(key) or snap.receipts.get(key)
        self.paths = {s: rec[s] if rec is not None else None for s in ("stdout", "stderr")}
        self.stream = "stdout"
        self.tail = LogTail(self.paths["stdout"])

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="detail-info"):
            yield Static(training_text(self.snap, self.key), id="detail-training")
            yield Static(detail_text(self.snap, self.key), id="detail-text")
            yield Static(self._outputs_text(), id="detail-outputs")
        yield Label("", id="log-title")
        yield Log(id="log", max_lines=5000)
        yield Footer()

    def _outputs_text(self) -> str:
        from cdhpc.sweep.manifest import Manifest

        with Manifest(self.snap.workdir, fallback=True) as m:  # read-only: never heals or writes
            outs = m.outputs_of(self.key)
        lines = [f"  {o['path']}  {o['bytes']:,} B  sha256 {o['sha256'][:12]}" for o in outs]
        return "outputs:\n" + ("\n".join(lines) if lines else "  (none)")

    def on_mount(self) -> None:
        self._show_stream()
        self.set_interval(self.poll_s, self.poll_log)

    def _show_stream(self) -> None:
        path = self.paths[self.stream]
        self.query_one("#log-title", Label).update(
            f"{self.stream}: {path or 'no log recorded'}   (l: toggle)"
        )
        self.query_one("#log", Log).clear()
        self.poll_log()

    def poll_log(self) -> None:
        if self.spec["stage"] == "pretrain":
            self.query_one("#detail-training", Static).update(training_text(self.snap, self.key))
        new = self.tail.read_new()
        if new:
            self.query_one("#log", Log).write(new)

    def action_toggle_log(self) -> None:
        self.stream = "stderr" if self.stream == "stdout" else "stdout"
        self.tail = LogTail(self.paths[self.stream])
        self._show_stream()
