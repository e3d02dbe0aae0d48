"""What bench/gpu_check.sh brings back, made from its work folder: the summary markdown (each step's
status, time and result; the CUDA tests per test function; compute-sanitizer's verdicts; the
benchmark's geometric-mean speedups) and one JSON of the same with every test's outcome and
compare.py's rows. Standard library only (it runs after every step, without importing torch).

    python bench/gpu_summary.py WORK --out OUT      # writes OUT/summary.md and OUT/gpu-check.json
    python bench/gpu_summary.py --check-limits OUT  # OUT within what a device run brings back
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# What a device run brings back from $OUT (the device tool's README): at most 8 files of at most
# 16 MiB each, 64 MiB in all, at most 2 folders down, named in letters, digits, '.', '_' and '-'.
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES, MAX_FOLDERS_DOWN = 8, 16 * 2**20, 64 * 2**20, 2
NAME = re.compile(r"[A-Za-z0-9._-]+")
SUMMARY, RESULTS = "summary.md", "gpu-check.json"


def read_steps(work: Path) -> list[dict]:
    if not (work / "steps.tsv").exists():
        return []
    with open(work / "steps.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_machine(work: Path) -> dict:
    path = work / "machine.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def read_junit(xml: Path) -> dict | None:
    """Every test case's outcome, counted in all and per test function; None without the file."""
    if not xml.exists():
        return None
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable junit XML: {e}"}
    cases, by_test, failed = {}, {}, []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failed.append({"test": name, "message": (child.get("message") or "")[:500]})
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        cases[name] = outcome
        counts = by_test.setdefault(name.split("[")[0], {"passed": 0, "failed": 0, "skipped": 0})
        counts[outcome] += 1
    total = {k: sum(c[k] for c in by_test.values()) for k in ("passed", "failed", "skipped")}
    return {"total": total, "by_test": by_test, "failed": failed, "cases": cases}


def sanitizer_verdict(work: Path, tool: str, steps: dict) -> dict:
    step = steps.get(f"sanitizer_{tool}", {})
    log = work / f"sanitizer_{tool}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) error", text)]
    if step.get("status") == "skipped":
        verdict = f"not run: {step.get('note', '')}"
    elif "not supported" in text.lower():
        verdict = "not run: the device is not supported by compute-sanitizer here"
    elif errors:
        verdict = "clean" if sum(errors) == 0 else f"{sum(errors)} errors"
    else:
        verdict = f"no verdict ({step.get('status', 'not reached')})"
    tests = read_junit(work / f"sanitizer_{tool}.xml")
    return {"verdict": verdict, "errors": sum(errors) if errors else None, "status": step.get("status"),
            "tests": tests["total"] if tests and "total" in tests else None}


def read_train(work: Path) -> dict | None:
    path = work / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return rows[-1] if rows else None


def collect(work: Path) -> dict:
    steps = read_steps(work)
    by_step = {s["step"]: s for s in steps}
    compare = work / "compare.json"
    return {"machine": read_machine(work), "steps": steps, "tests": read_junit(work / "cuda_tests.xml"),
            "stopped": by_step.get("cuda_tests", {}).get("status") == "timeout",
            "pytest": pytest_closing_line(work / "cuda_tests.log"),
            "sanitizer": {t: sanitizer_verdict(work, t, by_step) for t in ("memcheck", "racecheck")},
            "train": read_train(work), "compare": json.loads(compare.read_text()) if compare.exists() else None}


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def compare_lines(result: dict) -> list[str]:
    rows = result["rows"]
    timed = [r for r in rows if r.get("speedup")]
    groups: dict = {}
    for r in timed:
        groups.setdefault((r["section"], r["dtype"], r.get("pass", "step")), []).append(r["speedup"])
    m = result["machine"]
    out = [f"compare.py on {m['card']} (torch {m['torch']}, CUDA {m['cuda']}): {len(timed)} rows timed, "
           f"{sum('skipped' in r for r in rows)} skipped, {len(result['failures'])} failed; "
           f"speedup = fastest baseline / ours, geometric mean (min-max) over the rows",
           f"{'section':8} {'dtype':9} {'pass':8} {'rows':>4} {'speedup':>8} {'min':>6} {'max':>6}"]
    for (section, dtype, p), v in groups.items():
        out.append(f"{section:8} {dtype:9} {p:8} {len(v):4d} {geomean(v):8.2f} {min(v):6.2f} {max(v):6.2f}")
    gains: dict = {}  # the conv kernels' version 2 against version 1, same run
    for r in rows:
        t = r.get("times_s", {})
        if t.get("ours") and t.get("ours_v1"):
            gains.setdefault((r["dtype"], r["pass"]), []).append(t["ours_v1"] / t["ours"])
    for (dtype, p), v in gains.items():
        out.append(f"conv {dtype} {p}: kernels version 2 / version 1, speed ratio geomean {geomean(v):.2f} "
                   f"(min {min(v):.2f}, max {max(v):.2f}, {len(v)} rows)")
    for r in rows:
        if r["section"] == "train" and "images_per_s" in r:
            ips, pk = r["images_per_s"], r.get("peak_bytes", {})
            out.append(f"train {r['variant']} batch {r['batch']} {r['dtype']}: images/s custom "
                       f"{ips.get('custom', 0):.0f}, cudnn {ips.get('cudnn', 0):.0f}; peak MiB custom "
                       f"{pk.get('custom', 0) / 2**20:.0f}, cudnn {pk.get('cudnn', 0) / 2**20:.0f}")
    for k, v in result["failures"].items():
        out.append(f"FAILED {k}: {v}")
    return out


def _counts(c: dict | None) -> str:
    return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped" if c else ""


def pytest_closing_line(log: Path) -> str:
    """pytest's own count ("880 passed, 2 failed in 95.1s"): after a stop at the cap, the junit XML
    also lists the tests that were still running, as if they had passed."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    counted = [line.strip("= ") for line in lines if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return counted[-1] if counted else ""


def step_result(name: str, r: dict) -> str:
    if name == "cuda_tests" and r["tests"]:
        counts = r["tests"].get("error") or _counts(r["tests"]["total"])
        return counts + (f" (stopped at its cap; pytest counted {r['pytest']})" if r.get("stopped") else "")
    if name.startswith("sanitizer_"):
        v = r["sanitizer"][name.removeprefix("sanitizer_")]
        return v["verdict"] + (f" ({_counts(v['tests'])})" if v["tests"] else "")
    if name == "train" and r["train"]:
        t = r["train"]
        return f"{t['epoch']} epochs: test acc {100 * t['test_acc']:.1f}%, {t['images_per_s']:.0f} img/s (last epoch)"
    if name == "compare" and r["compare"]:
        rows = r["compare"]["rows"]
        return f"{sum(bool(x.get('speedup')) for x in rows)} rows timed, {len(r['compare']['failures'])} failed"
    return ""


def markdown(r: dict) -> str:
    m = r["machine"]
    out = [f"# gpu_check, {m.get('date', '?')}, {m.get('card', '?')} ({m.get('mode', '?')})", "",
           f"{m.get('torch', '')}; {m.get('python', '')}; nvcc {m.get('nvcc', '?')}; "
           f"compute-sanitizer {m.get('compute-sanitizer', '?')}", "",
           "| step | status | s | result |", "|---|---|---:|---|"]
    out += [f"| {s['step']} | {s['status']} | {s['seconds']} | {step_result(s['step'], r)} |" for s in r["steps"]]
    tests = r["tests"]
    if tests and "error" in tests:
        out += ["", f"CUDA tests: {tests['error']}"]
    if tests and "by_test" in tests:
        out += ["", "## CUDA tests, per test function", "", "| test | passed | failed | skipped |", "|---|---:|---:|---:|"]
        out += [f"| {t} | {c['passed']} | {c['failed']} | {c['skipped']} |" for t, c in sorted(tests["by_test"].items())]
        out += [f"- FAILED {f['test']}: {f['message'][:200]}" for f in tests["failed"][:50]]
    if r["compare"]:
        out += ["", "## compare.py", "", "```", *compare_lines(r["compare"]), "```"]
    return "\n".join(out) + "\n"


def write(work: Path, out: Path) -> str:
    r = collect(work)
    text = markdown(r)
    for name, content in ((SUMMARY, text), (RESULTS, json.dumps(r, indent=1, default=str))):
        tmp = out / (name + ".tmp")
        tmp.write_text(content)
        tmp.replace(out / name)
    return text


def check_limits(out: Path) -> list[str]:
    """What in OUT would not come back from a device run, or be too much; [] when all is well."""
    problems, files, total = [], [], 0
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not all(NAME.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: a name outside [A-Za-z0-9._-]")
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            problems.append(f"{rel}: not a plain file or folder")
        elif p.is_file():
            files.append(rel)
            total += p.stat().st_size
            if len(rel.parts) - 1 > MAX_FOLDERS_DOWN:
                problems.append(f"{rel}: more than {MAX_FOLDERS_DOWN} folders down")
            if p.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{rel}: {p.stat().st_size} bytes, over {MAX_FILE_BYTES}")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, over {MAX_FILES}: {', '.join(map(str, files))}")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in all, over {MAX_TOTAL_BYTES}")
    if not (out / SUMMARY).is_file():
        problems.append(f"no {SUMMARY}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="gpu_check.sh's work folder (or, with --check-limits, OUT)")
    ap.add_argument("--out", type=Path, help="write summary.md and gpu-check.json here")
    ap.add_argument("--check-limits", action="store_true", help="check the folder against the device's limits")
    args = ap.parse_args(argv)
    if args.check_limits:
        problems = check_limits(args.folder)
        for p in problems:
            print(f"over the device's limits: {p}")
        print(f"{args.folder}: {'FAILED' if problems else 'within'} the limits of a device run's $OUT")
        return 1 if problems else 0
    print(write(args.folder, args.out) if args.out else markdown(collect(args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
