"""The workdir layout (docs/design.md §8) has one owner, `cdhpc.sweep.workdir.Workdir`: the file
names users, scripts and the docs rely on, and no name that leaves the workdir."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from cdhpc.sweep.jobrecords import job_record_path
from cdhpc.sweep.plan import StepSpec
from cdhpc.sweep.receipts import receipt_path
from cdhpc.sweep.workdir import Workdir

ROOT = Path(__file__).resolve().parents[1]
KEY = "0123456789abcdef"


def test_the_fixed_files_and_folders_keep_their_names(tmp_path):
    w = Workdir(tmp_path)
    assert {
        name: getattr(w, name).relative_to(tmp_path).as_posix()
        for name in (
            "marker",
            "lock",
            "resolved_config",
            "plan",
            "manifest",
            "waves",
            "submitting",
            "results",
            "receipts",
            "job_records",
            "continuation_logs",
            "eval_cache",
        )
    } == {
        "marker": "cdhpc.json",
        "lock": ".lock",
        "resolved_config": "sweep.resolved.yaml",
        "plan": "plan.json",
        "manifest": "manifest.sqlite",
        "waves": "waves.json",
        "submitting": "submitting",
        "results": "results",
        "receipts": "receipts",
        "job_records": "jobs",
        "continuation_logs": "logs/continue",
        "eval_cache": "cache/evalpack",
    }
    assert w.retry_log(1700000000) == tmp_path / "logs" / "retry-1700000000.log"
    assert w.logs("pretrain") == tmp_path / "logs" / "pretrain"
    assert w.intent("cdhpc.tiny.prepare.ab12") == tmp_path / "submitting" / "cdhpc.tiny.prepare.ab12.json"


def test_a_steps_files_are_named_by_stage_name_and_key8(tmp_path):
    w = Workdir(tmp_path)
    assert (
        w.receipt("pretrain", "baseline-s1", KEY) == tmp_path / "receipts/pretrain/baseline-s1-01234567.json"
    )
    assert (
        w.job_record("pretrain", "baseline-s1", KEY) == tmp_path / "jobs/pretrain/baseline-s1-01234567.json"
    )
    assert w.step_dir("pretrain", "baseline-s1", KEY) == tmp_path / "pretrain/baseline-s1-01234567"
    spec = StepSpec("pretrain", "baseline-s1", KEY, {})  # the older entry points say the same
    assert receipt_path(tmp_path, spec.stage, spec.name, spec.key) == w.receipt(
        spec.stage, spec.name, spec.key
    )
    assert job_record_path(tmp_path, spec) == w.job_record(spec.stage, spec.name, spec.key)
    assert spec.out_dir(tmp_path) == w.step_dir(spec.stage, spec.name, spec.key) == tmp_path / spec.dirname


def test_a_workdir_is_a_frozen_path_like_value():
    w = Workdir("rel/work")
    assert w.root == Path("rel/work") and os.fspath(w) == "rel/work" and w.plan == Path("rel/work/plan.json")
    assert w == Workdir(Path("rel/work"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.root = Path("/elsewhere")  # type: ignore[misc]


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "x\0y"])
@pytest.mark.parametrize("path", ["receipt", "job_record", "step_dir"])
def test_a_step_name_cannot_leave_the_workdir(tmp_path, name, path):
    with pytest.raises(ValueError, match="not a single file name"):
        getattr(Workdir(tmp_path), path)("evaluate", name, KEY)
    # '..' alone is harmless: with its key it is the plain file name '..-01234567' under the stage
    assert (
        getattr(Workdir(tmp_path), path)("evaluate", "..", KEY).resolve().is_relative_to(tmp_path.resolve())
    )


@pytest.mark.parametrize("stage", ["..", ".", "a/../..", "/tmp"])
def test_a_stage_cannot_leave_the_workdir(tmp_path, stage):
    w = Workdir(tmp_path)
    for build in (
        lambda: w.receipt(stage, "n", KEY),
        lambda: w.job_record(stage, "n", KEY),
        lambda: w.step_dir(stage, "n", KEY),
        lambda: w.logs(stage),
        lambda: w.intent(stage),
    ):
        with pytest.raises(ValueError, match="not a single file name"):
            build()


def test_a_link_out_of_the_workdir_is_refused(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "receipts").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match="leaves"):
        Workdir(tmp_path / "w").receipt("pretrain", "n", KEY)


def test_the_design_page_lists_the_layout():
    """docs/design.md §8 draws the workdir; each artefact `Workdir` names is on it."""
    page = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = re.search(r"^## 8\. .*?(?=^## 9\.)", page, re.MULTILINE | re.DOTALL).group(0)
    for entry in (
        "cdhpc.json",
        ".lock",
        "sweep.resolved.yaml",
        "plan.json",
        "manifest.sqlite",
        "waves.json",
        "<stage>/<name>-<key8>/",
        "receipts/<stage>/<name>-<key8>.json",
        "jobs/<stage>/<name>-<key8>.json",
        "logs/<stage>/",
        "continue/",
        "retry-<time>.log",
        "submitting/<job name>.json",
        "cache/evalpack/",
        "results/",
        "Workdir",
    ):
        assert entry in section, f"docs/design.md §8 does not show {entry}"
