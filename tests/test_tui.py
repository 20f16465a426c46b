"""The terminal UI, driven headless by Textual's pilot on synthetic workdirs, and (slow) in tmux on
a real running tiny sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdhpc.benchmarks.status import build_workdir, write_step
from cdhpc.ui.actions import retry_command
from cdhpc.ui.tui import StatusApp
from cdhpc.ui.tui_screens import ConfirmScreen, DetailScreen, LogTail, TextScreen

ROOT = Path(__file__).resolve().parents[1]


def run(coro):
    import asyncio

    return asyncio.run(coro)


def test_log_tail_reads_only_appended_bytes(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("a" * 100 + "\nfirst\n")
    tail = LogTail(log, start_bytes=7)
    assert tail.read_new() == "\nfirst\n"  # the last 7 bytes on the first read
    assert tail.read_new() == ""
    with open(log, "a") as f:
        f.write("second\n")
    assert tail.read_new() == "second\n" and tail.offset == 114
    log.write_text("new\n")  # rewritten shorter: read from the start
    assert tail.read_new() == "new\n"
    assert LogTail(tmp_path / "missing.log").read_new() == "" and LogTail(None).read_new() == ""


@pytest.mark.slow
def test_navigation_filter_sort_and_results(tmp_path):
    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 200)
    evals = [i for i, s in enumerate(steps) if s["stage"] == "evaluate"]
    expect = [
        str(sum(i % 20 < 16 for i in evals)),
        "0",
        "0",
        str(sum(i % 20 == 16 for i in evals)),
        str(len(evals)),
    ]

    async def drive():
        app = StatusApp(workdir, refresh_s=3600)
        async with app.run_test(size=(160, 50)) as pilot:
            for _ in range(50):  # first paint from the manifest as it was, then the ingest (timer)
                await pilot.pause(0.1)
                if "160/200" in str(app.query_one("#summary").render()):
                    break
            assert "160/200 steps done" in str(app.query_one("#summary").render())
            assert "wave" not in str(app.query_one("#summary").render())  # not submitted in waves
            (workdir / "waves.json").write_text(
                json.dumps({"wave": 2, "left": 40, "continuation": "812", "after": ["760", "771"]})
            )
            app.refresh_data()
            assert "wave 2: 40 step(s) wait for the next wave, job 812" in str(
                app.query_one("#summary").render()
            )
            stages = app.query_one("#stages")
            assert [str(c) for c in stages.get_row("evaluate")[2:7]] == expect
            await pilot.press("2")
            await pilot.pause()
            steps = app.query_one("#steps-table")
            assert steps.row_count == 200
            await pilot.press("slash", *"failed", "enter")
            await pilot.pause()
            assert steps.row_count == 10 and {r.state for r in app.shown} == {"failed"}
            await pilot.press("slash", "ctrl+u", *"generate", "enter")
            await pilot.pause()
            assert steps.row_count == 40 and all(r.stage == "generate" for r in app.shown)
            await pilot.press("s", "s")  # sort by stage, then name
            assert app.sort_column == "name"
            await pilot.press("3")
            await pilot.pause()
            assert "PARTIAL" in str(app.query_one("#results-note").render())
            await pilot.press("t")  # the aggregate step is not done: no final table
            await pilot.pause()
            assert not isinstance(app.screen, TextScreen)

    run(drive())


@pytest.mark.slow
def test_detail_shows_spec_receipt_and_tails_log(tmp_path):
    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 40)
    out, err = tmp_path / "job.out", tmp_path / "job.err"
    out.write_text("line one\n")
    err.write_text("warning: on stderr\n")
    job = workdir / "jobs" / steps[2]["stage"] / f"{steps[2]['name']}-{steps[2]['key'][:8]}.json"
    rec = json.loads(job.read_text()) | {"stdout": str(out), "stderr": str(err)}
    job.write_text(json.dumps(rec))

    async def drive():
        app = StatusApp(workdir, refresh_s=3600)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("2", "down", "down", "enter")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, DetailScreen) and screen.key == steps[2]["key"]
            text = str(screen.query_one("#detail-text").render())
            assert steps[2]["name"] in text and "status: ok" in text and "host: node2" in text
            assert "out.txt" in str(screen.query_one("#detail-outputs").render())
            log = screen.query_one("#log")
            assert log.lines == ["line one", ""]  # the last line is open for more text
            with open(out, "a") as f:
                f.write("line two\n")
            screen.poll_log()
            screen.poll_log()
            assert log.lines == ["line one", "line two", ""]  # appended bytes only, once
            await pilot.press("l")
            assert log.lines == ["warning: on stderr", ""]
            await pilot.press("escape")
            assert not isinstance(app.screen, DetailScreen)

    run(drive())


def _submitit_sleeper(folder: Path):
    """A real submitit local job (its controller is what a local step's job record points at)."""
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=5)
    return executor.submit(time.sleep, 120)


@pytest.mark.slow
def test_cancel_step_asks_then_interrupts_controller(tmp_path):
    from cdhpc.executors.scheduler import pid_alive

    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 40)
    step = steps[19]  # no receipt: not started
    job = _submitit_sleeper(tmp_path / "submitit")
    record = workdir / "jobs" / step["stage"] / f"{step['name']}-{step['key'][:8]}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(
        json.dumps(
            {
                "key": step["key"],
                "executor": "local",
                "job_id": job.job_id,
                "array_index": None,
                "state": "RUNNING",
                "attempt": 1,
                "submitted": time.time(),
                "updated": time.time(),
                "stdout": str(job.paths.stdout),
                "stderr": str(job.paths.stderr),
            }
        )
    )
    try:

        async def drive():
            app = StatusApp(workdir, refresh_s=3600)
            async with app.run_test(size=(160, 50)) as pilot:
                await pilot.pause(0.2)
                await pilot.press("slash", *"running", "enter")
                await pilot.pause()
                assert [r.key for r in app.shown] == [step["key"]]
                await pilot.press("c")
                await pilot.pause()
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("n")  # declined: nothing happens
                await pilot.pause()
                assert pid_alive(job.job_id) and json.loads(record.read_text())["state"] == "RUNNING"
                await pilot.press("c")
                await pilot.pause()
                await pilot.press("y")
                await pilot.pause()
                assert json.loads(record.read_text())["state"] == "CANCELLED"
                for _ in range(600):  # seconds on a loaded machine (CI: 3 workers and a sweep on 2 cores)
                    if not pid_alive(job.job_id):
                        break
                    time.sleep(0.1)
                assert not pid_alive(job.job_id), "the cancelled controller still runs after 60 s"
                app.refresh_data()
                assert app.snap.states[step["key"]] == "failed"

        run(drive())
    finally:
        job.cancel(check=False)


@pytest.mark.slow
def test_refresh_while_receipts_arrive(tmp_path):
    workdir = tmp_path / "sweep"
    steps = build_workdir(workdir, 200)

    async def drive():
        app = StatusApp(workdir, refresh_s=3600)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("2")
            await pilot.pause()
            pending = [i for i, s in enumerate(steps) if app.snap.states[s["key"]] == "missing"]
            for n, i in enumerate(pending[:3], start=1):
                write_step(workdir, steps[i], i, "ok", time.time())
                app.refresh_data()
                assert f"{160 + n}/200 steps done" in str(app.query_one("#summary").render())
                row = app.query_one("#steps-table").get_row(steps[i]["key"])
                assert str(row[2]) == "done"

    run(drive())


def test_retry_command_pins_the_workdir(tmp_path):
    cmd = retry_command(tmp_path)
    assert cmd[1:] == ["-m", "cdhpc.launch", str(tmp_path / "sweep.resolved.yaml"), f"workdir={tmp_path}"]


# ----------------------------------------------------------------------------- tmux, a real sweep
def _pane(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def _pretrain_done(screen: str) -> int | None:
    for line in screen.splitlines():
        words = line.replace("│", " ").replace("┃", " ").split()
        if words[:1] == ["pretrain"]:
            return int(next(w for w in words[1:] if w.isdigit()))
    return None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install -y tmux)")
def test_tui_in_tmux_follows_a_running_sweep(tmp_path):
    workdir = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            str(ROOT / "configs" / "tiny.yaml"),
            f"workdir={workdir}",
            "pretrain.steps=20",
            "pretrain.checkpoint_every=10",
            "pretrain.seeds=[1]",
            "methods={baseline: {}}",  # one pretrain run, no amateur: the count goes from 0 to 1
            "eval.tasks=[blimp]",
            "eval.checkpoints=all",
            "retrain.seeds=[1]",
            "--until",
            "pretrain",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session = f"cdhpc-tui-{os.getpid()}"
    try:
        for _ in range(600):
            if (workdir / "plan.json").is_file():
                break
            time.sleep(0.1)
        app = (
            "from cdhpc.ui.tui import StatusApp; "
            f'StatusApp(__import__("pathlib").Path("{workdir}"), refresh_s=1).run()'
        )
        cmd = f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -c '{app}'"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "45", cmd], check=True)
        seen: list[int] = []
        deadline = time.time() + 400
        while time.time() < deadline and launch.poll() is None:
            screen = _pane(session)
            done = _pretrain_done(screen)
            if done is not None and (not seen or done != seen[-1]):
                seen.append(done)
                assert "prepare" in screen and "tokenizer" in screen and "steps done" in screen
            time.sleep(1)
        assert launch.wait(timeout=60) == 0
        time.sleep(3)
        final = _pane(session)
        seen.append(_pretrain_done(final))
        assert len(set(seen)) >= 2 and seen == sorted(seen)  # the count moved, forwards only
        assert seen[-1] > 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        if launch.poll() is None:
            launch.terminate()
            launch.wait(timeout=60)
