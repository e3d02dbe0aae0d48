"""How each section's configurations become result rows: the same loop, skips and failures for all.

A row is a flat dict: the configuration's key (section, sizes, dtype, pass), the median seconds of
every variant (`times_s`), the fastest baseline and ours' speedup over it, and ours' achieved
TFLOP/s and GB/s with their shares of the measured limits. A configuration past the time limit or
too large for the memory is a row with `skipped`; one that raised is a row with `error`.
"""
from __future__ import annotations

from .machine import share
from .timing import OutOfTime


def run_each(items, timer, table, failures: dict) -> list[dict]:
    """items: (key, label, one) triples; one() returns the configuration's rows, or a string that
    says why it was skipped. Rows are printed by `table` as they come."""
    rows, late = [], 0
    for key, label, one in items:
        try:
            timer.check()
            new = one()
            if isinstance(new, str):
                new = [{**key, "skipped": new}]
        except OutOfTime as e:
            rows.append({**key, "skipped": str(e)})
            late += 1
            continue
        except Exception as e:  # noqa: BLE001 - one broken configuration must not hide the others
            failures[label] = f"{type(e).__name__}: {str(e).strip()[:300]}"
            new = [{**key, "error": failures[label]}]
        for row in new:
            rows.append(row)
            table.row(row)
    if late:
        table.note(f"{late} configurations skipped: {rows[-1]['skipped']}")
    return rows


def speed_row(key: dict, pass_: str, times: dict, names, limits: dict, flops, nbytes, failed: dict) -> dict:
    """One pass's row: `times` holds the verified variants' seconds (ours may be missing: it failed).
    Variants named ours_* are other versions of ours (an A/B), not baselines."""
    t = {n: times.get(n) for n in names}
    base = {n: v for n, v in t.items() if not n.startswith("ours") and v is not None}
    best = min(base, key=base.get) if base else None
    row = {**key, "pass": pass_, "times_s": t, "best_baseline": best,
           "speedup": base[best] / t["ours"] if best and t["ours"] else None, "flops": flops, "bytes": nbytes}
    row.update(share(limits, key["dtype"], flops, nbytes, t["ours"]))
    if failed:
        row["failed"] = failed
    return row
