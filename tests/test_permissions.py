"""Files and folders cdhpc writes follow the process umask (0644/0755 under 022, 0640/0750 under
027), atomic writes included; a finished tiny workdir is readable by the group and others under
umask 022; --dry-run leaves a finished workdir byte-identical."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cdhpc.base.atomicio import atomic_dir, atomic_write_bytes, atomic_write_json, current_umask, follow_umask

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    """Run the test under this umask (this process's), then restore the old one."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every path under root (root included), by relative path."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_current_umask_reads_it_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still set: reading it did not reset it


def test_atomic_writers_follow_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a" / "x.bin", b"x")
    atomic_write_json(tmp_path / "y.json", {"y": 1})
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        fd = os.open(tmp / "sub" / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors writes
        os.close(fd)
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        (tmp / "run.sh").chmod(0o700)
    file, folder, exe = 0o666 & ~umask, 0o777 & ~umask, 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "a" / "x.bin").stat().st_mode) == file
    assert stat.S_IMODE((tmp_path / "y.json").stat().st_mode) == file
    assert modes(tmp_path / "d") == {".": folder, "sub": folder, "sub/private.bin": file, "run.sh": exe}


def test_follow_umask_keeps_mtimes_and_leaves_symlinks(tmp_path, umask):
    f = tmp_path / "f"
    f.write_text("x")
    f.chmod(0o600)
    os.utime(f, ns=(1, 123456789))
    (tmp_path / "link").symlink_to("/etc/hostname")
    follow_umask(tmp_path)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask and f.stat().st_mtime_ns == 123456789
    assert (tmp_path / "link").is_symlink()


def test_lock_manifest_and_step_outputs_follow_the_umask(tmp_path, umask):
    from cdhpc.sweep.lock import WorkdirLock
    from cdhpc.sweep.manifest import Manifest
    from jobs import share_outputs

    with WorkdirLock(tmp_path):
        pass
    Manifest(tmp_path).close()
    out = tmp_path / "pretrain" / "run"
    out.mkdir(parents=True, mode=0o700)
    (out / "model.safetensors").write_bytes(b"w")
    (out / "model.safetensors").chmod(0o600)
    share_outputs([out])
    file, folder = 0o666 & ~umask, 0o777 & ~umask
    got = modes(tmp_path)
    assert got[".lock"] == got["manifest.sqlite"] == got["pretrain/run/model.safetensors"] == file
    assert got["pretrain/run"] == folder


@pytest.mark.slow
def test_a_prepare_run_under_umask_027_writes_0640_and_0750(tmp_path):
    """The launcher, the local job and the toy prepare step (which fixes 0755 for its folder)."""
    workdir = tmp_path / "work"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            "configs/tiny.yaml",
            f"workdir={workdir}",
            "--until",
            "prepare",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = modes(workdir)
    assert len(got) > 50
    wrong = {p: oct(m) for p, m in got.items() if m != (0o750 if (workdir / p).is_dir() else 0o640)}
    assert not wrong


@pytest.mark.slow
def test_a_finished_tiny_workdir_is_readable_by_group_and_others(tiny_local):
    """Under umask 022 (tests/conftest.py runs the sweep so): every file r for all, every folder
    r-x for all, nothing writable by the group or others."""
    workdir, _ = tiny_local
    got = modes(workdir)
    assert len(got) > 1000
    unreadable = {
        p: oct(m)
        for p, m in got.items()
        if m & 0o044 != 0o044 or ((workdir / p).is_dir() and m & 0o011 != 0o011)
    }
    writable = {p: oct(m) for p, m in got.items() if m & 0o022}
    assert not unreadable and not writable


def fingerprint(root: Path) -> dict[str, tuple]:
    """Every path under root: (sha256 of its bytes or link target, mode, mtime_ns); folders too."""
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            digest = os.readlink(p) if p.is_symlink() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mode, st.st_mtime_ns)
    return out


@pytest.mark.slow
def test_dry_run_leaves_a_finished_workdir_byte_identical(tiny_local):
    workdir, _ = tiny_local
    before = fingerprint(workdir)
    for extra in ([], ["executor=slurm", "executor.profile=dev"]):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cdhpc.launch",
                "configs/tiny.yaml",
                f"workdir={workdir}",
                "--dry-run",
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "sweep tiny: plan until aggregate" in out.stdout
    assert fingerprint(workdir) == before
