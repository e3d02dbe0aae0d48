"""compare.py's output: fixed-width terminal tables (printed row by row as results come), the short
markdown summary kept in bench/results/, and the plot of speedups.

Times are milliseconds; `speedup` is the fastest verified baseline's time over ours (above 1: ours is
faster) and `best` names that baseline; `%mm` and `%copy` are ours' achieved TFLOP/s and GB/s as
shares of the matrix-product rate and copy bandwidth measured in the same run. `v2 x` (conv, on a
GPU): the kernels' version 1 time over ours' (version 2; above 1: version 2 wins).
"""
from __future__ import annotations

import sys

MiB = 2**20


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(row: dict, name: str) -> str:
    t = row.get("times_s", {}).get(name)
    if t is None:
        return "FAILED" if name in row.get("failed", {}) else "-"
    return f"{t * 1e3:.3f}"


def _pair(d, a: str, b: str) -> str:
    if not d:
        return ""
    return f"{_f(d.get(a) and d[a] / MiB, '.1f')}/{_f(d.get(b) and d[b] / MiB, '.1f')}"


def version_gain(row: dict):
    """The CUDA kernels' version 1 time over ours' (version 2): above 1, version 2 wins; None where
    not timed."""
    t = row.get("times_s", {})
    return t["ours_v1"] / t["ours"] if t.get("ours_v1") and t.get("ours") else None


def _common(row: dict) -> list:
    return [_f(row.get("speedup"), ".2f"), row.get("best_baseline") or "-", _f(row.get("tflops"), ".3f"),
            _f(row.get("pct_matmul"), ".0f")]


def _cudnn_ips(ips: dict):
    """The faster cudnn run's images/s (channels_last, or NCHW on the CPU)."""
    v = [x for x in (ips.get("cudnn"), ips.get("cudnn_nchw")) if x is not None]
    return max(v) if v else None


# (header, width, cell of a row) per section
COLUMNS = {
    "conv": [("variant", 8, lambda r: r["variant"]), ("layer", 5, lambda r: r["layer"]),
             ("batch", 5, lambda r: r["batch"]), ("dtype", 8, lambda r: r["dtype"]), ("pass", 7, lambda r: r["pass"]),
             ("ours ms", 9, lambda r: _ms(r, "ours")), ("nchw ms", 9, lambda r: _ms(r, "nchw")),
             ("nhwc ms", 9, lambda r: _ms(r, "nhwc")), ("compile", 9, lambda r: _ms(r, "compile")),
             ("cmp nhwc", 9, lambda r: _ms(r, "compile_nhwc")),
             ("speedup", 7, lambda r: _common(r)[0]), ("best", 12, lambda r: _common(r)[1]),
             ("TFLOP/s", 8, lambda r: _common(r)[2]), ("%mm", 4, lambda r: _common(r)[3]),
             ("GB/s", 7, lambda r: _f(r.get("gbs"), ".1f")), ("%copy", 5, lambda r: _f(r.get("pct_copy"), ".0f")),
             ("saved MiB o/eager", 17, lambda r: _pair(r.get("saved_bytes"), "ours", "nchw")),
             ("v2 x", 5, lambda r: _f(version_gain(r), ".2f"))],
    "loss": [("N x C", 13, lambda r: f"{r['N']}x{r['C']}"), ("dtype", 8, lambda r: r["dtype"]),
             ("pass", 7, lambda r: r["pass"]), ("ours ms", 9, lambda r: _ms(r, "ours")),
             ("eager ms", 9, lambda r: _ms(r, "eager")), ("compile", 9, lambda r: _ms(r, "compile")),
             ("speedup", 7, lambda r: _common(r)[0]), ("best", 7, lambda r: _common(r)[1]),
             ("GB/s", 7, lambda r: _f(r.get("gbs"), ".1f")), ("%copy", 5, lambda r: _f(r.get("pct_copy"), ".0f"))],
    "train": [("variant", 8, lambda r: r["variant"]), ("batch", 5, lambda r: r["batch"]),
              ("dtype", 8, lambda r: r["dtype"]), ("custom ms", 9, lambda r: _ms(r, "ours")),
              ("cudnn ms", 9, lambda r: _ms(r, "cudnn")), ("cudnn nchw", 10, lambda r: _ms(r, "cudnn_nchw")),
              ("img/s c/cudnn", 13, lambda r: "/".join(_f(v, ".0f") for v in (
                  r.get("images_per_s", {}).get("custom"), _cudnn_ips(r.get("images_per_s", {}))))),
              ("speedup", 7, lambda r: _common(r)[0]), ("TFLOP/s", 8, lambda r: _common(r)[2]),
              ("%mm", 4, lambda r: _common(r)[3]),
              ("peak MiB c/cudnn", 16, lambda r: _pair(r.get("peak_bytes"), "custom", "cudnn")),
              ("saved MiB c/cudnn", 17, lambda r: _pair(r.get("saved_bytes"), "custom", "cudnn"))],
}
TITLES = {
    "conv": "1. conv + ReLU + max-pool: ours vs conv2d -> relu -> max_pool2d (NCHW, channels_last, torch.compile)",
    "loss": "2. softmax cross-entropy: ours vs F.cross_entropy (eager, torch.compile)",
    "train": "3. training step of AlexNet: backend custom vs cudnn",
}
_TIMES = "times in ms (medians); speedup = the fastest verified baseline's time / ours (above 1: ours wins), best = that baseline"
_RATES = ("TFLOP/s and GB/s: ours' achieved rates; %mm and %copy: those as shares of the matrix product rate and "
          "the copy bandwidth measured at the start of this run")
LEGENDS = {  # printed under each table: what its columns mean
    "conv": [_TIMES + "; ours: channels_last input and weights; nchw / nhwc: conv2d -> relu -> max_pool2d in NCHW / "
             "channels_last; compile / cmp nhwc: the same under torch.compile, in NCHW / channels_last",
             _RATES,
             "saved MiB o/eager: memory kept for backward, ours / the eager NCHW path",
             "v2 x (GPU only): the kernels' version 1 time / version 2's (above 1: version 2 wins)"],
    "loss": [_TIMES + "; eager: F.cross_entropy, compile: under torch.compile", _RATES],
    "train": ["one AlexNet training step (forward, loss, backward, SGD update): custom = our kernels, cudnn = "
              "PyTorch's ops (cuDNN on a GPU, oneDNN on a CPU), both in channels_last; cudnn nchw (CPU only): cudnn "
              "in NCHW; speedup = the faster cudnn run's ms / custom ms",
              "img/s c/cudnn: images per second, custom / the faster cudnn run; TFLOP/s: custom's achieved rate, %mm: its share "
              "of the matrix product rate measured at the start of this run",
              "peak MiB c/cudnn: peak memory of the step; saved MiB c/cudnn: memory kept for backward"],
}
SHORT_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
KEYS = {"conv": 5, "loss": 3, "train": 3}  # leading columns that name the configuration


class Table:
    """Prints one section's rows under a fixed-width header, as they come."""

    def __init__(self, section: str, out=None):
        self.section, self.out, self.started = section, out or sys.stdout, False
        self.cols = COLUMNS[section]

    def _start(self):
        if not self.started:
            self.started = True
            print(f"\n{TITLES[self.section]}", file=self.out)
            print(" ".join(f"{h:>{w}}" for h, w, _ in self.cols), file=self.out)

    def row(self, row: dict) -> None:
        self._start()
        n = KEYS[self.section]
        if "skipped" in row or "error" in row:
            lead = " ".join(f"{str(c(row)) if _has(row, c) else '':>{w}}" for _, w, c in self.cols[:n])
            print(f"{lead} {'skipped: ' + row['skipped'] if 'skipped' in row else 'ERROR: ' + row['error']}",
                  file=self.out)
        else:
            print(" ".join(f"{str(c(row)):>{w}}" for _, w, c in self.cols), file=self.out)
            for name, why in row.get("failed", {}).items():
                print(f"{'':>{self.cols[0][1]}} {name} FAILED verification: {why}", file=self.out)
        self.out.flush()

    def note(self, text: str) -> None:
        self._start()
        print(f"  ({text})", file=self.out)

    def legend(self) -> None:
        """What the columns mean, under the table."""
        if self.started:
            for line in LEGENDS[self.section]:
                print(f"  {line}", file=self.out)
            self.out.flush()


def _has(row, cell) -> bool:
    try:
        cell(row)
        return True
    except KeyError:
        return False


def markdown(result: dict) -> str:
    """The short summary: machine, then per section the speedups of the timed rows."""
    m, lim = result["machine"], result["limits"]
    out = [f"# compare.py, {m['date'][:10]}, {m['card']}", "",
           f"torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, pyalexnet {m['pyalexnet']}, "
           f"mode {result['mode']}; measured limits: matmul "
           + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in lim["matmul_tflops"].items())
           + f", copy {lim['copy_gbs']:.0f} GB/s. Speedup = fastest verified baseline / ours."
           + (f" {result['busy_cores']} CPU core(s) kept busy by other processes (--busy)." if result.get("busy_cores")
              else ""), ""]
    rows = [r for r in result["rows"] if "times_s" in r]
    conv = [r for r in rows if r["section"] == "conv"]
    if conv:
        ab = any(version_gain(r) for r in conv)  # the version A/B was timed (a GPU run)
        out += ["| variant | layer | batch | dtype | fwd | bwd | fwd+bwd | fwd+bwd % of matmul | saved MiB ours / eager |"
                + (" v2 gain fwd / fwd+bwd |" if ab else ""), "|---|---|---|---|---|---|---|---|---|" + ("---|" if ab else "")]
        for r in conv:
            if r["pass"] == "fwd+bwd":
                same = [q for q in conv if _same(q, r, ("variant", "layer", "batch", "dtype"))]
                sp = {q["pass"]: q.get("speedup") for q in same}
                gain = {q["pass"]: version_gain(q) for q in same}
                out.append(f"| {r['variant']} | {r['layer']} | {r['batch']} | {r['dtype']} | {_f(sp.get('fwd'), '.2f')} | "
                           f"{_f(sp.get('bwd'), '.2f')} | {_f(sp.get('fwd+bwd'), '.2f')} | {_f(r.get('pct_matmul'), '.0f')} | "
                           f"{_pair(r.get('saved_bytes'), 'ours', 'nchw').replace('/', ' / ')} |"
                           + (f" {_f(gain.get('fwd'), '.2f')} / {_f(gain.get('fwd+bwd'), '.2f')} |" if ab else ""))
        out.append("")
    loss = [r for r in rows if r["section"] == "loss"]
    if loss:
        out += ["| N x C | dtype | fwd | fwd+bwd | fwd+bwd GB/s (% of copy) |", "|---|---|---|---|---|"]
        for r in loss:
            if r["pass"] == "fwd+bwd":
                f = next((q.get("speedup") for q in loss if q["pass"] == "fwd" and _same(q, r, ("N", "C", "dtype"))), None)
                out.append(f"| {r['N']} x {r['C']} | {r['dtype']} | {_f(f, '.2f')} | {_f(r.get('speedup'), '.2f')} | "
                           f"{_f(r.get('gbs'), '.1f')} ({_f(r.get('pct_copy'), '.0f')}%) |")
        out.append("")
    train = [r for r in rows if r["section"] == "train"]
    if train:
        out += ["| AlexNet | batch | dtype | images/s custom | images/s cudnn (faster layout) | speedup | peak MiB custom / cudnn |",
                "|---|---|---|---|---|---|---|"]
        for r in train:
            ips = r.get("images_per_s", {})
            out.append(f"| {r['variant']} | {r['batch']} | {r['dtype']} | {_f(ips.get('custom'), '.0f')} | "
                       f"{_f(_cudnn_ips(ips), '.0f')} | {_f(r.get('speedup'), '.2f')} | "
                       f"{_pair(r.get('peak_bytes'), 'custom', 'cudnn').replace('/', ' / ')} |")
        out.append("")
    bad = [r for r in result["rows"] if "error" in r or "failed" in r]
    if bad:
        out += [f"Failures: {len(bad)} rows (see the JSON)", ""]
    return "\n".join(out)


def _same(a: dict, b: dict, keys) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


def plot(result: dict, path: str) -> None:
    """Bar charts of ours' speedup over the fastest baseline, one panel per section (log scale)."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in result["rows"]:
        if r.get("speedup"):
            dt = SHORT_DTYPES.get(r["dtype"], r["dtype"])
            name = {"conv": lambda: f"{r['variant']} {r['layer']} b{r['batch']} {dt} {r['pass']}",
                    "loss": lambda: f"{r['N']}x{r['C']} {dt} {r['pass']}",
                    "train": lambda: f"{r['variant']} b{r['batch']} {dt}"}[r["section"]]()
            groups.setdefault(r["section"], []).append((name, r["speedup"]))
    if not groups:
        sys.exit("--plot: no timed rows to plot")
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(10, sum(1 + 0.18 * len(v) for v in groups.values())),
                             gridspec_kw={"height_ratios": [1 + 0.18 * len(v) for v in groups.values()]})
    for ax, (section, bars) in zip(axes[:, 0], groups.items()):
        names, values = zip(*bars)
        ax.barh(range(len(bars)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
        ax.set_yticks(range(len(bars)), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(TITLES[section], fontsize=8)
        ax.set_xlabel("speedup over the fastest baseline (log scale; > 1: ours faster)", fontsize=7)
    m = result["machine"]
    fig.suptitle(f"{m['card']} | torch {m['torch']} | CUDA {m['cuda']} | {m['date'][:10]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
