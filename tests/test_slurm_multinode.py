"""Multi-rank and multi-node pretraining for real, on the two-node dev cluster (`slurm/dev-cluster/start.sh
--nodes 2`: two slurmd daemons on this host, partition `pair`; marker: slurm). DeepSpeed over
gloo with `nodes: 2, tasks_per_node: 1` takes its ranks, MASTER_ADDR/PORT and WORLD_SIZE from
submitit's JobEnvironment across the two nodes, and its loss curve and checkpoints equal those of
`nodes: 1, tasks_per_node: 2` (the same global batch) to float tolerance, although the two-node
job is requeued (`scontrol requeue`) once its first checkpoint exists and both ranks resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cdhpc.ui.status import SnapshotReader
from waits import wait_until

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sinfo") is None, reason="SLURM not installed; run slurm/dev-cluster/start.sh"
    ),
]
ROOT = Path(__file__).resolve().parents[1]
PAIR = "pair"
# one pretrain step, baseline-s1 (no other method, so no amateur model), two checkpoints
TRAIN = (
    "--until",
    "pretrain",
    "pretrain.seeds=[1]",
    "pretrain.steps=60",
    "pretrain.checkpoint_every=30",
    "pretrain.micro_batch=8",
    "eval.checkpoints=all",
    "eval.tasks=[blimp]",
    "methods={baseline: {}}",
)


@pytest.fixture(scope="module")
def pair_partition() -> None:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-p", PAIR, "-o", "%N %T"], capture_output=True, text=True, timeout=10
    )
    nodes = [line.split() for line in out.stdout.splitlines() if line.strip()]
    if len(nodes) != 2 or any(
        state not in ("idle", "mixed", "allocated", "completing") for _, state in nodes
    ):
        why = (
            f"partition {PAIR!r} has no two nodes up ({out.stdout.strip() or out.stderr.strip()}); "
            "run slurm/dev-cluster/start.sh --nodes 2"
        )
        if os.environ.get("CI"):
            pytest.fail(why)  # CI starts the two-node cluster: a missing node is a failure there
        pytest.skip(why)


def profile(tmp_path: Path, pretrain_partition: str) -> Path:
    """slurm/dev.yaml with the pretrain stage's partition set."""
    data = yaml.safe_load((ROOT / "slurm" / "dev.yaml").read_text())
    data["stages"]["pretrain"]["partition"] = pretrain_partition
    path = tmp_path / f"dev-{pretrain_partition}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def launch(workdir: Path, prof: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            "configs/tiny.yaml",
            f"workdir={workdir}",
            "executor=slurm",
            f"executor.profile={prof}",
            *TRAIN,
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def states(workdir: Path) -> dict[str, str]:
    with SnapshotReader(workdir) as reader:
        snap = reader.read()
    return {f"{s['stage']}/{s['name']}": snap.states[s["key"]] for s in snap.steps}


def settled(workdir: Path) -> dict[str, str] | None:
    now = {k: v for k, v in states(workdir).items() if v != "missing"}
    return None if not now or any(v in ("queued", "running") for v in now.values()) else now


def curve(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines if "loss" in m]
    assert len(steps) == len(set(steps)), "a resume leaves every step once"
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {
        p.parent.name: load_file(p) for p in sorted((run_dir / "checkpoints").glob("*/model.safetensors"))
    }


def sacct_nodes(job: str) -> tuple[int, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "NNodes,NodeList"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    n, nodelist = out[-1].split("|")
    return int(n), nodelist


def test_two_nodes_train_like_one_node_with_two_tasks_and_a_requeue_resumes_both_ranks(
    pair_partition, tmp_path
):
    import torch

    one, two = tmp_path / "one-node", tmp_path / "two-nodes"
    runs = [
        launch(one, profile(tmp_path, "debug"), "executor.resources.pretrain.tasks_per_node=2"),
        launch(
            two,
            profile(tmp_path, PAIR),
            "executor.resources.pretrain.nodes=2",
            "executor.resources.pretrain.tasks_per_node=1",
        ),
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    rec_path = next((two / "jobs" / "pretrain").glob("baseline-s1-*.json"))
    run_dir = two / "pretrain" / rec_path.stem
    wait_until(
        "the two-node job's first checkpoint", lambda: (run_dir / "ds" / "progress.json").is_file(), 900, 0.5
    )
    rec = json.loads(rec_path.read_text())
    job = rec["job_id"] if rec["array_index"] is None else f"{rec['job_id']}_{rec['array_index']}"
    requeue = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=30)
    assert requeue.returncode == 0, requeue.stderr
    for workdir in (one, two):
        final = wait_until(f"{workdir.name}'s steps to finish", lambda w=workdir: settled(w), 1200, 3)
        assert set(final.values()) == {"done"}, final

    for workdir in (one, two):  # only rank 0 writes the receipt, with the world it trained in
        receipt = json.loads(next((workdir / "receipts" / "pretrain").glob("baseline-s1-*.json")).read_text())
        assert receipt["metrics"]["world_size"] == 2 and receipt["slurm"]["job_id"]
    assert sacct_nodes(job) == (2, "localhost,localhost2"), "one task on each node"
    task0 = Path(rec["stdout"])  # <job>[_<index>]_0_log.out: the logs of this job's tasks differ in the 0
    logs = sorted(task0.parent.glob(f"{task0.name.rsplit('_', 2)[0]}_*_log.out"))
    assert len(logs) == 2, f"one log per task (rank): {logs}"
    texts = [log.read_text() for log in logs]
    for rank, text in enumerate(texts):  # each rank's process started twice: the requeue restarted both
        assert text.count(f"global_rank={rank}(2)") == 2, f"{logs[rank].name}:\n{text[-2000:]}"
    starts = [int(n) for n in re.findall(r"start_step=(\d+)", texts[0])]  # rank 0 logs the step loop
    assert len(starts) == 2 and starts[0] == 0 and starts[1] in (30, 60), f"start steps {starts}"
    # DeepSpeed loads a checkpoint on every rank at once (collectives): equal weights at the end
    # mean both ranks resumed from it

    reference = one / "pretrain" / next((one / "jobs" / "pretrain").glob("baseline-s1-*.json")).stem
    a, b = curve(reference), curve(run_dir)
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(a[s])) for s in a), (a, b)
    wa, wb = weights(reference), weights(run_dir)
    assert wa.keys() == wb.keys() and len(wa) == 2
    for ckpt, tensors in wa.items():
        for name, t in tensors.items():
            torch.testing.assert_close(wb[ckpt][name], t, rtol=1e-5, atol=1e-6, msg=f"{ckpt}/{name}")
