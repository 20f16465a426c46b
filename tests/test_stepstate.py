"""cdhpc.sweep.stepstate: the one step-state rule, for the launcher (a plan, warnings) and the status UI
(step keys, an intactness cache filled in bulk), with known answers."""

from __future__ import annotations

import hashlib
import logging
import os

from cdhpc.sweep.stepstate import outputs_intact_by_key, step_states


def _out(root, rel: str, text: str) -> dict:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    st = p.stat()
    return {
        "path": rel,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def test_outputs_are_checked_by_stat_and_rehashed_only_when_the_mtime_moved(tmp_path):
    same = _out(tmp_path, "a/same.txt", "abc")
    touched = _out(tmp_path, "b/touched.txt", "abc")
    os.utime(tmp_path / "b/touched.txt", ns=(1, 1))  # new mtime, same bytes: re-hashed, intact
    edited = _out(tmp_path, "c/edited.txt", "abc")
    (tmp_path / "c/edited.txt").write_text("abd")  # same size, new content
    gone = _out(tmp_path, "d/gone.txt", "abc")
    (tmp_path / "d/gone.txt").unlink()
    rows = [
        (k, o["path"], o["sha256"], o["bytes"], o["mtime_ns"])
        for k, o in (("a", same), ("b", touched), ("c", edited), ("d", gone), ("a", same))
    ]
    assert outputs_intact_by_key(str(tmp_path), rows) == {"a": True, "b": True, "c": False, "d": False}


def test_step_states_with_a_cache_checks_once_and_logs_nothing(tmp_path, caplog):
    out = _out(tmp_path, "s/out.txt", "x")
    receipts = {k: {"status": "ok", "stage": "s", "name": k} for k in ("done", "changed")}
    receipts["bad"] = {"status": "failed", "stage": "s", "name": "bad"}
    jobs = {
        "live": {"state": "PENDING", "executor": "slurm", "job_id": "7"},
        "gone": {"state": "COMPLETED", "executor": "slurm", "job_id": "8"},
    }
    outputs = {"done": [out], "changed": [dict(out, bytes=99)]}
    asked = []

    def outputs_of(key):
        asked.append(key)
        return outputs[key]

    keys = ["done", "changed", "bad", "live", "gone", "new"]
    cache: dict[str, bool] = {}
    with caplog.at_level(logging.WARNING, logger="cdhpc"):
        states = step_states(tmp_path, keys, receipts, jobs, outputs_of, intact=cache)
        assert step_states(tmp_path, keys, receipts, jobs, outputs_of, intact=cache) == states
    assert states == {
        "done": "done",
        "changed": "failed",
        "bad": "failed",
        "live": "queued",
        "gone": "failed",
        "new": "missing",
    }
    assert asked == ["done", "changed"] and cache == {"done": True, "changed": False} and not caplog.records
    with caplog.at_level(
        logging.WARNING, logger="cdhpc"
    ):  # the launcher's call: no cache, the changed step logged
        assert step_states(tmp_path, keys, receipts, jobs, outputs_of) == states
    assert [r.getMessage() for r in caplog.records] == [
        "step s/changed: outputs changed since its receipt; it will run again"
    ]


def test_outputs_stat_ed_in_bulk_give_the_per_file_answer(tmp_path):
    """The bulk stat pass: a missing or edited file found among intact ones, a file recorded by
    its absolute path looked up as it is, a touched file re-hashed."""
    outs = [_out(tmp_path, f"s{i}/out.txt", f"text {i}") for i in range(8)]
    outs[7]["path"] = str(tmp_path / outs[7]["path"])  # recorded absolute
    rows = [(f"k{i}", o["path"], o["sha256"], o["bytes"], o["mtime_ns"]) for i, o in enumerate(outs)]
    (tmp_path / "s1/out.txt").unlink()
    (tmp_path / "s6/out.txt").write_text("text X")  # same size
    want = {f"k{i}": i not in (1, 6) for i in range(8)}
    assert outputs_intact_by_key(str(tmp_path), rows) == want
    (tmp_path / "s1/out.txt").write_text("text 1")  # back, with a new mtime: re-hashed, intact
    os.utime(tmp_path / "s7/out.txt", ns=(1, 1))  # touched
    assert outputs_intact_by_key(str(tmp_path), rows) == dict(want, k1=True)
    (tmp_path / "s7/out.txt").write_text("text 8")  # edited, absolute
    assert outputs_intact_by_key(str(tmp_path), rows) == dict(want, k1=True, k7=False)
