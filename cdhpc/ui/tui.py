"""``cdhpc status WORKDIR`` in a terminal: a Textual app over ``cdhpc.ui.status`` snapshots.

Tabs: Overview (stages with progress bars, times, tokens, GPU-hours), Steps (sortable, ``/``
filter, Enter for a step's detail with a live log tail) and Results (the paper table filling in).
Actions ask first: ``c`` cancels a step, ``C`` its stage, ``R`` re-launches the sweep to retry
failed steps, ``t`` opens the final results table.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane

from cdhpc.executors.waves import read_waves, wave_line
from cdhpc.sweep.workdir import Workdir
from cdhpc.ui.actions import LIVE, cancel_steps, retry_command, start_retry
from cdhpc.ui.status import (
    PartialTable,
    Snapshot,
    SnapshotReader,
    StageRow,
    StepRow,
    filter_rows,
    format_duration,
    partial_table,
    sort_rows,
    stage_overview,
    step_rows,
)
from cdhpc.ui.tui_screens import ConfirmScreen, DetailScreen, TextScreen

BAR_COLOURS = {"done": "green", "running": "yellow", "queued": "cyan", "failed": "red"}
STEP_COLUMNS = ("stage", "name", "state", "job", "attempts", "node", "runtime_s", "metric")
STATE_STYLE = {
    "done": "green",
    "running": "yellow",
    "queued": "cyan",
    "failed": "bold red",
    "blocked": "magenta",
}


def progress_bar(row: StageRow, width: int = 30) -> Text:
    """Pure: a bar of `width` cells, one coloured segment per state (done, running, queued,
    failed), the rest still to run."""
    bar, used = Text(), 0
    for state, colour in BAR_COLOURS.items():
        n = round(width * row.counts[state] / row.total) if row.total else 0
        n = min(n, width - used)
        bar.append("█" * n, style=colour)
        used += n
    bar.append("░" * (width - used), style="grey37")
    return bar


# ----------------------------------------------------------------------------- the app
def step_cells(r: StepRow) -> tuple:
    """Pure: a steps-table row's cells."""
    return (
        r.stage,
        r.name,
        Text(r.state, style=STATE_STYLE.get(r.state, "")),
        r.job,
        str(r.attempts or ""),
        r.node,
        format_duration(r.runtime_s) if r.runtime_s is not None else "",
        r.metric,
    )


class StatusApp(App[int]):
    """The sweep's live status. Refreshes every `refresh_s` seconds and on `r`."""

    TITLE = "cdhpc status"
    CSS = """
    #confirm { width: 70; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    ConfirmScreen, TextScreen { align: center middle; }
    #confirm Horizontal { height: auto; }
    #text { width: 95%; height: 90%; border: thick $primary; background: $surface; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #detail-info { height: 50%; }
    #log { height: 1fr; border: solid $primary; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("r", "refresh", "refresh"),
        Binding("1", "tab('overview')", "overview"),
        Binding("2", "tab('steps')", "steps"),
        Binding("3", "tab('results')", "results"),
        Binding("slash", "filter", "filter"),
        Binding("s", "sort", "sort"),
        Binding("c", "cancel_step", "cancel step"),
        Binding("C", "cancel_stage", "cancel stage"),
        Binding("R", "retry", "retry failed"),
        Binding("t", "results_table", "results table"),
    ]

    def __init__(self, workdir: Path, refresh_s: float = 2.0):
        super().__init__()
        self.workdir, self.refresh_s = Path(workdir), refresh_s
        self.reader = SnapshotReader(self.workdir)
        self.snap: Snapshot | None = None
        self.query_text, self.sort_column, self.sort_reverse = "", "", False
        self.shown: list[StepRow] = []
        self.retry_proc: subprocess.Popen | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="overview"):
            with TabPane("Overview", id="overview"):
                yield Static("", id="summary")
                yield DataTable(id="stages", cursor_type="row")
            with TabPane("Steps", id="steps"):
                yield Input(
                    placeholder="filter: words in stage/name/job/node; a state (failed, running, ...)",
                    id="filter",
                )
                yield DataTable(id="steps-table", cursor_type="row")
            with TabPane("Results", id="results"):
                yield Static("", id="results-note")
                yield DataTable(id="results-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.workdir)
        self.query_one("#stages", DataTable).add_columns(
            "stage",
            "progress",
            "done",
            "running",
            "queued",
            "failed",
            "total",
            "elapsed",
            "remaining",
            "tokens",
            "GPU-h",
        )
        steps = self.query_one("#steps-table", DataTable)
        for col in STEP_COLUMNS:
            steps.add_column("runtime" if col == "runtime_s" else col, key=col)
        self.first_paint: float | None = None  # time.perf_counter() when the first data was on screen
        self.refresh_data(ingest=False)  # first render from the manifest as it is (< 1 s at 10,000 steps)
        self.call_after_refresh(self._painted)
        self.set_interval(self.refresh_s, self.refresh_data)

    def _painted(self) -> None:
        self.first_paint = time.perf_counter()
        self.set_timer(0.01, self.refresh_data)  # then ingest what arrived since the last ingest

    # -- refresh ---------------------------------------------------------------------------
    def refresh_data(self, verify: bool = False, ingest: bool = True) -> None:
        """Read a new snapshot and update every view (`verify`: re-check all done outputs)."""
        self.snap = self.reader.read(verify=verify, ingest=ingest)
        self._show_overview(self.snap)
        self._show_steps()
        self._show_results(partial_table(self.snap))

    def _show_overview(self, snap: Snapshot) -> None:
        rows = stage_overview(snap)
        table = self.query_one("#stages", DataTable)
        table.clear()
        for r in rows:
            c = r.counts
            table.add_row(
                r.stage,
                progress_bar(r),
                str(c["done"]),
                str(c["running"]),
                str(c["queued"]),
                Text(str(c["failed"]), style="bold red" if c["failed"] else ""),
                str(r.total),
                format_duration(r.elapsed_s),
                format_duration(r.remaining_s),
                f"{r.tokens:,}" if r.tokens else "",
                f"{r.gpu_hours:.2f}",
                key=r.stage,
            )
        done = sum(r.counts["done"] for r in rows)
        tokens, gpu_h = sum(r.tokens for r in rows), sum(r.gpu_hours for r in rows)
        waves = wave_line(read_waves(snap.workdir))  # a sweep submitted in waves (cdhpc.executors.waves)
        self.query_one("#summary", Static).update(
            f"{done}/{len(snap.steps)} steps done   tokens generated {tokens:,}   GPU-hours {gpu_h:.2f}   "
            f"updated {time.strftime('%H:%M:%S', time.localtime(snap.now))}" + (f"\n{waves}" if waves else "")
        )

    def _show_steps(self) -> None:
        """Rebuild the steps table when its rows changed; the Steps tab is filled only once seen
        (start-up with 10,000 steps renders the overview first)."""
        if self.snap is None or self.query_one(TabbedContent).active != "steps" and not self.shown:
            return
        rows = filter_rows(step_rows(self.snap), self.query_text)
        if self.sort_column:
            rows = sort_rows(rows, self.sort_column, self.sort_reverse)
        if rows == self.shown:
            return
        table = self.query_one("#steps-table", DataTable)
        if [r.key for r in rows] == [r.key for r in self.shown]:
            for old, new in zip(self.shown, rows):
                if old != new:
                    for col, cell in zip(STEP_COLUMNS, step_cells(new)):
                        table.update_cell(new.key, col, cell)
        else:
            cursor = table.cursor_row
            table.clear()
            for r in rows:
                table.add_row(*step_cells(r), key=r.key)
            table.move_cursor(row=min(cursor, max(0, len(rows) - 1)))
        self.shown = rows

    def _show_results(self, t: PartialTable) -> None:
        table = self.query_one("#results-table", DataTable)
        table.clear(columns=True)
        table.add_columns("method", *t.tasks)
        for m in t.methods:
            cells = []
            for task in t.tasks:
                v = t.cells.get((m, task))
                cells.append(
                    "" if v is None else f"{v[0]:.2f}" + ("" if v[1] == v[2] else f" ({v[1]}/{v[2]})")
                )
            table.add_row(m, *cells)
        scored = sum(v[1] for v in t.cells.values())
        planned = sum(1 for s in self.snap.steps if s["stage"] == "evaluate") if self.snap else 0
        final = self._aggregate_done()
        note = (
            "final: aggregation is done; press t for the paper table with ± and significance"
            if final
            else f"PARTIAL: {scored}/{planned} evaluate steps scored; mean-max over the checkpoints scored "
            "so far (point values, no bootstrap); (n/m) = checkpoints x seeds scored of planned"
        )
        self.query_one("#results-note", Static).update(Text(note, style="green" if final else "yellow"))

    def _aggregate_done(self) -> bool:
        snap = self.snap
        return snap is not None and any(
            s["stage"] == "aggregate" and snap.states[s["key"]] == "done" for s in snap.steps
        )

    # -- navigation ------------------------------------------------------------------------
    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "steps":
            self._show_steps()
            if self.focused is not self.query_one("#filter", Input):
                self.query_one("#steps-table", DataTable).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_refresh(self) -> None:
        self.refresh_data(verify=True)

    def action_filter(self) -> None:
        self.action_tab("steps")
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self._show_steps()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            event.input.remove_class("shown")
        self.query_one("#steps-table", DataTable).focus()

    def action_sort(self) -> None:
        """Cycle the sort column (a click on a column header sorts by it; again reverses)."""
        i = STEP_COLUMNS.index(self.sort_column) + 1 if self.sort_column else 0
        self.sort_column, self.sort_reverse = (STEP_COLUMNS[i] if i < len(STEP_COLUMNS) else ""), False
        self._show_steps()
        self.notify(f"sorted by {self.sort_column or 'plan order'}")

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if event.data_table.id != "steps-table":
            return
        col = str(event.column_key.value)
        self.sort_reverse = not self.sort_reverse if col == self.sort_column else False
        self.sort_column = col
        self._show_steps()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "steps-table" and self.snap is not None:
            self.push_screen(DetailScreen(self.snap, str(event.row_key.value)))
        elif event.data_table.id == "stages":
            self.query_text = str(event.row_key.value)
            self.query_one("#filter", Input).value = self.query_text
            self.query_one("#filter", Input).add_class("shown")
            self.action_tab("steps")

    # -- actions ---------------------------------------------------------------------------
    def current_step(self) -> StepRow | None:
        """The step under the cursor (the one shown when a detail screen is open)."""
        if isinstance(self.screen, DetailScreen):
            return next((r for r in step_rows(self.snap) if r.key == self.screen.key), None)
        table = self.query_one("#steps-table", DataTable)
        if self.query_one(TabbedContent).active != "steps" or not self.shown:
            return None
        return self.shown[min(table.cursor_row, len(self.shown) - 1)]

    def _confirm_cancel(self, keys: list[str], what: str) -> None:
        if not keys:
            self.notify(f"{what}: nothing running or queued to cancel", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes and self.snap is not None:
                for msg in cancel_steps(self.snap, keys):
                    self.notify(msg)
                self.refresh_data()

        self.push_screen(ConfirmScreen(f"Cancel {what} ({len(keys)} running/queued step(s))?"), done)

    def action_cancel_step(self) -> None:
        row = self.current_step()
        if row is None:
            self.notify("select a step in the Steps tab first", severity="warning")
            return
        self._confirm_cancel([row.key] if row.state in LIVE else [], f"step {row.stage}/{row.name}")

    def action_cancel_stage(self) -> None:
        row = self.current_step()
        stage = (
            row.stage
            if row
            else self.query_one("#stages", DataTable)
            .coordinate_to_cell_key(self.query_one("#stages", DataTable).cursor_coordinate)
            .row_key.value
        )
        keys = [
            s["key"] for s in self.snap.steps if s["stage"] == stage and self.snap.states[s["key"]] in LIVE
        ]
        self._confirm_cancel(keys, f"stage {stage}")

    def action_retry(self) -> None:
        failed = sum(s in ("failed", "blocked") for s in self.snap.states.values()) if self.snap else 0
        if not failed:
            self.notify("no failed steps to retry", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.retry_proc, log = start_retry(self.workdir)
                self.notify(f"retrying: launcher pid {self.retry_proc.pid}, log {log}")

        self.push_screen(
            ConfirmScreen(
                f"Retry {failed} failed/blocked step(s)? Runs: {' '.join(retry_command(self.workdir))}"
            ),
            done,
        )

    def action_results_table(self) -> None:
        table = Workdir(self.workdir).results / "paper_table.md"
        if not self._aggregate_done() or not table.is_file():
            self.notify(
                "the results table appears when the aggregate step is done; see the Results tab for the "
                "partial table",
                severity="warning",
            )
            return
        self.push_screen(TextScreen(f"results: {table}", table.read_text()))


def run_app(workdir: Path, refresh_s: float = 2.0) -> int:
    """Run the terminal UI on a workdir (checked by the caller) until `q`. Returns 0."""
    StatusApp(workdir, refresh_s).run()
    return 0
