"""The short table bench/gpu_check.sh prints last: each step's status, time and result, then the
benchmark's geometric-mean speedups.  python bench/gpu_summary.py OUT
"""
from __future__ import annotations

import csv
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def tests_result(xml: Path) -> str:
    if not xml.exists():
        return ""
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s[0]
    n, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
    return f"{n - f - e - k} passed, {f + e} failed, {k} skipped"


def train_result(log: Path) -> str:
    if not log.exists():
        return ""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not rows:
        return ""
    last = rows[-1]
    return (f"{last['epoch']} epochs: test acc {100 * last['test_acc']:.1f}%, "
            f"{last['images_per_s']:.0f} img/s (last epoch)")


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


def main(out: Path) -> int:
    results = {"cuda_tests": tests_result(out / "cuda_tests.xml"),
               "train_custom": train_result(out / "train-custom.jsonl"),
               "train_cudnn": train_result(out / "train-cudnn.jsonl")}
    print(f"\n=== summary ({out})")
    print(f"{'step':22} {'status':16} {'s':>4}  result")
    with open(out / "steps.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            print(f"{row['step']:22} {row['status']:16} {row['seconds']:>4}  {results.get(row['step'], '')}")
    if (out / "compare.json").exists():
        print()
        print("\n".join(compare_lines(json.loads((out / "compare.json").read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")))
