"""Calibrate the regression gate on this machine: false alarms and detections, per mode, out of K trials.

Three ways of gating are tried, each K times, on unchanged code (A/A: every
failure is a false alarm) and on a candidate in which one variant's forward is
planted to run about `--factor` times slower (A/B: a failure naming only that
variant is a detection):

- plain:  `compare` of two sweeps without rounds (timing indicative only);
- rounds: `compare` of two sweeps with `--rounds R` each (unpaired);
- ab:     `mlabench ab` of the two trees with `--rounds R` (fresh process per
          round, paired).

The code measured is a snapshot of HEAD checked out into two temporary git
worktrees, one of them with the planted slowdown (a busy-wait after the
variant's forward, as long as the forward took times factor - 1); the script
makes and removes them. Each trial appends one JSON line to `<out>/trials.jsonl`
(so a long run can be read while it goes, and `--table` prints the table from it);
the end prints, per mode, false alarms / K, detections / K, and which cases
were flagged.

    python benchmarks/gate_calibration.py --k 10 --out results/runs/calibration
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SUITE = """
name = "calibration"
description = "Four eager decode cases: small enough for many trials, one of them planted slow."

[settings]
budget_s = {budget}
warmup_s = 0.02
min_samples = 15
threads = 1

[[grid]]
model = "tiny"
variant = ["mha", "gqa", "mla-absorbed", "lowrank-kv"]
backend = "eager"
mode = "decode"
batch = [2]
seq_len = [256]
"""

PLANT = '''

# Planted for gate calibration: {variant}'s forward busy-waits {extra:.2f}x its own duration.
def _planted_slowdown() -> None:
    import time

    cls = variant_class("{variant}")
    original = cls.forward

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = original(self, *args, **kwargs)
        until = time.perf_counter() + (time.perf_counter() - started) * {extra}
        while time.perf_counter() < until:
            pass
        return out

    cls.forward = forward


_planted_slowdown()
'''

MODES = ("plain", "rounds", "ab")
TABLE_MODES = ("plain", "plain --sample-test", "rounds", "ab")


def _run(cmd: list[str], tree: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stderr[-4000:]}\n")
    return proc


def _verdict(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """Exit code, flagged cases (any verdict that fails or claims a change) and the summary line."""
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"exit": proc.returncode, "flagged": [], "summary": proc.stderr.strip().splitlines()[-1:]}
    flagged = [f"{c['label']}:{c['verdict']}" for c in doc["cases"]
               if c["verdict"] in ("regressed", "improved", "changed")]
    return {"exit": proc.returncode, "flagged": flagged, "summary": doc["summary"]}


class Trees:
    """A clean and a planted worktree of HEAD, removed on exit."""

    def __init__(self, repo: Path, variant: str, factor: float):
        self.repo = repo
        self.root = Path(tempfile.mkdtemp(prefix="gate-calibration-"))
        self.clean, self.planted = self.root / "clean", self.root / "planted"
        for tree in (self.clean, self.planted):
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet", str(tree), "HEAD"],
                           check=True)
        init = self.planted / "mlabench" / "variants" / "__init__.py"
        init.write_text(init.read_text() + PLANT.format(variant=variant, extra=factor - 1))

    def close(self) -> None:
        for tree in (self.clean, self.planted):
            subprocess.run(["git", "-C", str(self.repo), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def trial(mode: str, k: int, trees: Trees, suite: Path, work: Path, args: argparse.Namespace) -> list[dict]:
    """One A/A and one A/B comparison of `mode`; returns their records."""
    py = sys.executable
    log = work / "commands.log"
    here = work / f"{mode}-{k:02d}"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    threshold = ["--threshold", str(args.threshold)]
    records = []
    started = time.perf_counter()
    if mode in ("plain", "rounds"):
        extra = ["--rounds", str(args.rounds)] if mode == "rounds" else []
        runs = {}
        # The baseline sweep is shared by the A/A and the A/B comparison; the order of the
        # other two alternates, so neither always runs later in the trial.
        order = [("a", trees.clean), ("b", trees.clean), ("c", trees.planted)]
        if k % 2:
            order = [order[0], order[2], order[1]]
        for name, tree in order:
            runs[name] = here / name
            proc = _run([py, "-m", "mlabench", "sweep", "--suite", str(suite), "--out", str(runs[name]),
                         "--device", "cpu", "--no-report", "--no-probe", "--no-accuracy", *extra], tree, log)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"sweep failed ({proc.returncode}); see {log}")
        # Plain runs are also judged the way the gate did before it required rounds (--sample-test).
        variants = [(mode, [])] + ([("plain --sample-test", ["--sample-test"])] if mode == "plain" else [])
        for label, flags in variants:
            for kind, cand in (("null", runs["b"]), ("planted", runs["c"])):
                proc = _run([py, "-m", "mlabench", "compare", str(runs["a"]), str(cand), "--json", *threshold,
                             *flags], trees.clean, log)
                records.append({"mode": label, "k": k, "kind": kind, **_verdict(proc)})
    else:
        pairs = [("null", trees.clean), ("planted", trees.planted)]
        for kind, cand in (pairs if k % 2 == 0 else pairs[::-1]):
            proc = _run([py, "-m", "mlabench", "ab", str(trees.clean), str(cand), "--suite", str(suite),
                         "--rounds", str(args.rounds), "--device", "cpu", "--out", str(here / kind), "--json",
                         *threshold], trees.clean, log)
            records.append({"mode": mode, "k": k, "kind": kind, **_verdict(proc),
                            "startup": [x for x in proc.stderr.splitlines() if "start-up" in x]})
    for r in records:
        r["seconds"] = round(time.perf_counter() - started, 1)
    return records


def table(records: list[dict], variant: str) -> str:
    """Per mode: false alarms / K, detections / K (only the planted variant regressed), what was flagged."""
    lines = ["| mode | false alarms (A/A, exit != 0) | detections (A/B, exit 1) | only the planted variant "
             "regressed | cases flagged (A/A; A/B) |", "|---|---|---|---|---|"]
    for mode in TABLE_MODES:
        null = [r for r in records if r["mode"] == mode and r["kind"] == "null"]
        planted = [r for r in records if r["mode"] == mode and r["kind"] == "planted"]
        if not null and not planted:
            continue
        alarms = sum(r["exit"] != 0 for r in null)
        detected = sum(r["exit"] == 1 for r in planted)
        only = sum(r["exit"] == 1 and all(f.startswith(f"{variant}:") and f.endswith(":regressed")
                                          for f in r["flagged"]) for r in planted)
        flagged_null = Counter(f for r in null for f in r["flagged"])
        flagged_planted = Counter(f for r in planted for f in r["flagged"])
        describe = "; ".join(", ".join(f"{f} x{n}" for f, n in c.most_common()) or "none"
                             for c in (flagged_null, flagged_planted))
        lines.append(f"| {mode} | {alarms}/{len(null)} | {detected}/{len(planted)} | {only}/{len(planted)} | "
                     f"{describe} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=10, help="trials per mode (each one A/A and one A/B)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: plain, rounds, ab")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per side in the rounds and ab modes")
    parser.add_argument("--threshold", type=float, default=0.10)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of sampling per case and round")
    parser.add_argument("--variant", default="lowrank-kv", help="the variant planted slow")
    parser.add_argument("--factor", type=float, default=1.5, help="its slowdown")
    parser.add_argument("--out", type=Path, default=Path("results/runs/calibration"))
    parser.add_argument("--table", action="store_true", help="only print the table of <out>/trials.jsonl")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.k < 1 or args.rounds < 3 or any(m not in MODES for m in modes):
        parser.error("--k must be >= 1, --rounds >= 3, --modes from plain, rounds, ab")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "trials.jsonl"
    if args.table:
        records = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        print(table(records, args.variant))
        return 0
    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    suite = args.out / "calibration.toml"
    suite.write_text(SUITE.format(budget=args.budget))
    results.write_text("")  # this run's trials only
    trees = Trees(repo, args.variant, args.factor)
    records: list[dict] = []
    try:
        for k in range(args.k):
            for mode in modes:  # modes interleaved, so the machine's load drifts over all of them alike
                found = trial(mode, k, trees, suite, args.out.resolve(), args)
                records += found
                with results.open("a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in found)
                print(f"trial {k + 1}/{args.k} {mode}: " + ", ".join(
                    f"{r['kind']} exit {r['exit']} {r['flagged'] or ''}" for r in found), flush=True)
    finally:
        trees.close()
    print(table(records, args.variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
