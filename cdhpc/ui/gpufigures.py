"""The GPU readiness figures of ``bash .ci/gpu``: what each one is, its target, how it is read off a
part's output, ``gpu.jsonl`` (one JSON line per figure) and the table printed at the end.

``gpu.jsonl`` is also the calibration file of ``--dry-run --calibration`` (``read_calibration``).
Standard library only: ``.ci/gpu`` records a part's figures even when the part failed to import
the project's dependencies. docs/gpu.md says what each figure means.

CLI (used by ``.ci/gpu``)::

    python -m cdhpc.gpufigures record PART --status ok|timeout|failed --out gpu.jsonl [...]
    python -m cdhpc.gpufigures table gpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdhpc.sweep.workdir import Workdir

BLIMP_PAIRS = 67_000  # BLiMP: 67 paradigms x 1,000 minimal pairs (134,000 scored sentences)


@dataclass(frozen=True)
class Figure:
    unit: str
    op: str | None  # ">=", "<=", "==" or None (reported, no target)
    target: Any
    what: str

    def target_text(self) -> str | None:
        if self.op is None:
            return None
        return self.target if isinstance(self.target, str) else f"{self.op} {self.target}"

    def met(self, value: Any, ctx: dict) -> bool | None:
        if self.op is None:
            return None
        if value is None:
            return False
        if self.target == "all passed":  # passed tests: none failed, errored or skipped
            return value > 0 and ctx.get("failures", 1) + ctx.get("errors", 1) + ctx.get("skipped", 1) == 0
        if self.unit == "tokens/s" and "batch" in ctx:  # the CD target is stated for batch >= 256, 400 tokens
            return value >= self.target and ctx["batch"] >= 256 and ctx.get("new_tokens") == 400
        return {">=": value >= self.target, "<=": value <= self.target, "==": value == self.target}[self.op]


FIGURES: dict[str, Figure] = {
    "gpu_tests": Figure("tests", "==", "all passed", "pytest -m gpu: tests passed (none failed or skipped)"),
    "train_tokens_per_s": Figure("tokens/s", None, None, "DeepSpeed bf16 training, one GPU"),
    "train_mfu": Figure("fraction", ">=", 0.40, "model FLOPs utilisation of that training"),
    "train_ratio_vs_plain": Figure("x", None, None, "our DeepSpeed step / a plain PyTorch AdamW loop"),
    "cd_tokens_per_s": Figure("tokens/s", ">=", 75_000, "CD sampling, batch >= 256, 400 new tokens"),
    "cd_speedup_vs_hf": Figure("x", ">=", 4.0, "our CD sampler / the authors'-style HF loop, same batch"),
    "sample_tokens_per_s": Figure("tokens/s", None, None, "plain ancestral sampling, same batch"),
    "eval_blimp_s": Figure("s", "<=", 10.0, "full-BLiMP-sized evaluation wall time, host work included"),
    "eval_same_decisions": Figure(
        "bool", "==", True, "every minimal-pair decision equals the reference's, but near-ties in bf16"
    ),
    "tiny_sweep_s": Figure("s", None, None, "configs/tiny.yaml end to end on the GPU"),
    "tiny_sweep_ok": Figure("bool", "==", True, "every planned step ok, training and sampling on CUDA"),
}
PART_FIGURES = {
    "pytest_gpu": ["gpu_tests"],
    "bench_train": ["train_tokens_per_s", "train_mfu", "train_ratio_vs_plain"],
    "bench_sampler": ["cd_tokens_per_s", "cd_speedup_vs_hf", "sample_tokens_per_s"],
    "bench_eval": ["eval_blimp_s", "eval_same_decisions"],
    "tiny_sweep": ["tiny_sweep_s", "tiny_sweep_ok"],
}


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object with a "bench" key (a benchmark's result;
    DeepSpeed and transformers log to the same stream)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "bench" in obj:
                return obj
    raise ValueError("no benchmark result (a JSON line with a 'bench' key) in the output")


def from_train(r: dict) -> dict[str, tuple[Any, dict]]:
    ctx = {
        k: r.get(k)
        for k in (
            "preset",
            "vocab_size",
            "seq_len",
            "micro_batch",
            "accumulation",
            "precision",
            "compile",
            "peak_flops",
        )
    } | {"plain_tokens_per_s": r["peer"]}
    return {
        "train_tokens_per_s": (r["ours"], ctx),
        "train_mfu": (r["mfu_ours"], ctx),
        "train_ratio_vs_plain": (r["ratio"], ctx),
    }


def from_sampler(r: dict) -> dict[str, tuple[Any, dict]]:
    row = max(r["rows"], key=lambda x: x["batch"])  # the batch the CD target is stated for
    ctx = {k: row.get(k) for k in ("preset", "vocab", "params_m", "batch", "new_tokens", "prompt_len")}
    out = {
        "cd_tokens_per_s": (row["ours_cd_tokens_per_s"], ctx),
        "sample_tokens_per_s": (row["ours_vanilla_tokens_per_s"], ctx),
    }
    if "speedup_cd" in row:
        out["cd_speedup_vs_hf"] = (
            row["speedup_cd"],
            ctx | {"hf_cd_tokens_per_s": row["reference_cd_tokens_per_s"]},
        )
    return out


def from_eval(r: dict) -> dict[str, tuple[Any, dict]]:
    """Seconds for BLIMP_PAIRS pairs (scaled linearly when the bench scored another number)."""
    ctx = {
        "pairs": r["pairs"],
        "measured_s": r["ours_s"],
        "scaled": r["pairs"] != BLIMP_PAIRS,
        "model": r.get("model"),
        "reference_s": r.get("peer_s"),
        # bf16: pairs within decision_tolerance nats of a tie may flip (counted, not failed)
        **{k: r.get(k) for k in ("decision_flips", "max_flip_margin", "decision_tolerance")},
    }
    return {
        "eval_blimp_s": (r["ours_s"] * BLIMP_PAIRS / r["pairs"], ctx),
        "eval_same_decisions": (bool(r.get("decisions_agree", r["identical_decisions"])), ctx),
    }


def from_junit(path: Path) -> dict[str, tuple[Any, dict]]:
    """Passed tests and the counts of the others from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{c.get('classname')}::{c.get('name')}"
        for s in suites
        for c in s.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return {"gpu_tests": (passed, n | {"failed": failed})}


def from_sweep(workdir: Path, seconds: float) -> dict[str, tuple[Any, dict]]:
    """Wall time, and whether every planned step has an ok receipt with training and sampling on
    CUDA (pretrain receipts record the device they trained on)."""
    steps = json.loads(Workdir(workdir).plan.read_text())["steps"]
    receipts = [json.loads(p.read_text()) for p in Workdir(workdir).receipts.glob("*/*.json")]
    ok = {r["key"] for r in receipts if r.get("status") == "ok"}
    devices = sorted(
        {str(r.get("metrics", {}).get("device")) for r in receipts if r.get("stage") == "pretrain"}
    )
    gen_rates = [
        r["metrics"]["tokens_per_s"]
        for r in receipts
        if r.get("stage") == "generate" and "tokens_per_s" in r.get("metrics", {})
    ]
    ctx = {
        "steps": len(steps),
        "ok": sum(s["key"] in ok for s in steps),
        "pretrain_devices": devices,
        "generate_tokens_per_s_mean": sum(gen_rates) / len(gen_rates) if gen_rates else None,
    }
    all_ok = ctx["ok"] == len(steps) and bool(devices) and all(d.startswith("cuda") for d in devices)
    return {"tiny_sweep_s": (seconds, ctx), "tiny_sweep_ok": (all_ok, ctx)}


def figure_lines(part: str, status: str, values: dict[str, tuple[Any, dict]], meta: dict) -> list[dict]:
    """One line per figure of ``part``; a figure the part did not produce has value None, met False."""
    lines = []
    for name in PART_FIGURES[part]:
        fig = FIGURES[name]
        value, ctx = values.get(name, (None, {}))
        met = fig.met(value, ctx) if status == "ok" else (False if fig.op else None)
        lines.append(
            {
                "figure": name,
                "value": value,
                "unit": fig.unit,
                "target": fig.target_text(),
                "met": met,
                "status": status if name in values or status != "ok" else "missing",
                **meta,
                "context": ctx,
            }
        )
    return lines


def extract(part: str, args: argparse.Namespace) -> dict[str, tuple[Any, dict]]:
    if part == "pytest_gpu":
        return from_junit(Path(args.junit))
    if part == "tiny_sweep":
        return from_sweep(Path(args.workdir), args.seconds)
    reader = {"bench_train": from_train, "bench_sampler": from_sampler, "bench_eval": from_eval}[part]
    return reader(last_json(Path(args.log).read_text(errors="replace")))


def append_lines(path: Path, lines: list[dict]) -> None:
    """Append to ``path`` atomically (the whole file is rewritten through a temp file)."""
    old = path.read_text() if path.is_file() else ""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(old + "".join(json.dumps(x, sort_keys=False) + "\n" for x in lines))
    os.replace(tmp, path)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render_table(lines: list[dict]) -> str:
    """Plain text: figure, value, unit, target, met, status (one row per line of gpu.jsonl)."""
    rows = [("figure", "value", "unit", "target", "met", "status")]
    rows += [
        (
            x["figure"],
            _shown(x["value"]),
            x["unit"],
            x["target"] or "-",
            "-" if x["met"] is None else ("MET" if x["met"] else "NOT MET"),
            x["status"],
        )
        for x in lines
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message is one line naming file and line."""


NUMERIC = {name for name, f in FIGURES.items() if f.unit not in ("bool", "tests")}


def read_calibration(path: Path) -> dict[str, dict]:
    """Figures of a ``gpu.jsonl`` by name: ``{"value", "context", "device", "date"}``, only those
    with a usable value (a part that timed out leaves a null value: not an error, just absent).
    Raises CalibrationError for anything malformed (the message names the file and line)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(
            f"{path}: cannot read the calibration file ({e.__class__.__name__}: {e})"
        ) from None
    found: dict[str, dict] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            line = _calibration_line(path, no, raw)
            if line is not None:
                found[line["figure"]] = line
    if not found:
        raise CalibrationError(
            f"{path}: no usable figure; expected lines of `bash .ci/gpu`'s gpu.jsonl "
            f"with one of {', '.join(sorted(NUMERIC))}"
        )
    return found


def _calibration_line(path: Path, no: int, raw: str) -> dict | None:
    where = f"{path}:{no}"
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise CalibrationError(
            f"{where}: not JSON ({e.msg}); each line is one JSON object of gpu.jsonl"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("figure"), str):
        raise CalibrationError(f"{where}: expected a JSON object with a string 'figure', got {raw[:60]!r}")
    name, value = obj["figure"], obj.get("value")
    if name not in NUMERIC or value is None:
        return None  # other figures (tests, booleans) and parts that did not finish
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise CalibrationError(f"{where}: figure {name!r} has value {value!r}; allowed: a finite number > 0")
    ctx = obj.get("context", {})
    if not isinstance(ctx, dict):
        raise CalibrationError(f"{where}: figure {name!r}: 'context' must be a JSON object, got {ctx!r}")
    return {
        "figure": name,
        "value": float(value),
        "context": ctx,
        "device": str(obj.get("device", "?")),
        "date": str(obj.get("date", "?")),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdhpc.gpufigures")
    sub = p.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="append a part's figures to gpu.jsonl")
    rec.add_argument("part", choices=sorted(PART_FIGURES))
    rec.add_argument("--status", required=True, help="ok, timeout or failed (exit N)")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--log", help="the part's output (benchmarks)")
    rec.add_argument("--junit", help="pytest's JUnit XML (pytest_gpu)")
    rec.add_argument("--workdir", help="the sweep's workdir (tiny_sweep)")
    rec.add_argument("--seconds", type=float, default=0.0)
    rec.add_argument("--command", default="")
    rec.add_argument("--device", default="")
    rec.add_argument("--date", default="")
    tab = sub.add_parser("table", help="print gpu.jsonl as a table")
    tab.add_argument("path", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "table":
        lines = [json.loads(x) for x in args.path.read_text().splitlines() if x.strip()]
        print(render_table(lines))
        return 0 if all(x["met"] is not False for x in lines) else 1
    values, status = {}, args.status
    try:  # also after a failure or a timeout: failed tests count, and a benchmark that printed its
        values = extract(args.part, args)  # result and then hung at exit has its figures (never met)
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as e:
        status = status if status != "ok" else f"no result ({e.__class__.__name__}: {e})"[:200]
    meta = {
        "command": args.command,
        "device": args.device,
        "date": args.date,
        "seconds": round(args.seconds, 1),
    }
    append_lines(args.out, figure_lines(args.part, status, values, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
