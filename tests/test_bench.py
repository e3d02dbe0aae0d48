"""bench/compare.py and its pieces: the layer table, the FLOP and byte counts, the timer and its
deadline, verify-before-time, the outputs (JSON, markdown, plot), and a tiny run of every section
that takes seconds. CI also runs `compare.py --quick` itself (.ci/run)."""
from __future__ import annotations

import json
from pathlib import Path
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, torchvision_or_skip

from pyalexnet.layers import LAYERS

if str(REPO_ROOT) not in sys.path:  # the bench package; appended, so pyalexnet stays the installed one
    sys.path.append(str(REPO_ROOT))
from bench import checks, compare, gpu_summary, machine, report  # noqa: E402
from bench import conv_relu_maxpool as conv_bench  # noqa: E402
from bench import rows as bench_rows  # noqa: E402
from bench import softmax_cross_entropy as loss_bench  # noqa: E402
from bench.timing import OutOfTime, Timer  # noqa: E402

TINY = ["--variants", "cifar", "--layers", "conv1,conv2", "--batches", "3", "--dtypes", "float32",
        "--shapes", "64x10,33x1000", "--no-compile", "--train-batches", "cifar:2", "--min-run-time", "0.01",
        "--sets", "2"]


@pytest.fixture(autouse=True)
def restore_backend_flags():
    bench = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = bench


def test_layer_geometry_flops_and_bytes():
    c1 = LAYERS["imagenet"][0]
    assert (c1.conv_hw, c1.out_hw) == (55, 27)
    assert (LAYERS["cifar"][0].conv_hw, LAYERS["cifar"][0].out_hw) == (32, 15)
    assert LAYERS["cifar"][2].out_hw == LAYERS["cifar"][2].conv_hw == 7  # pool 1/1: no pooling
    c2 = LAYERS["imagenet"][1]  # 57 GFLOP forward at batch 128 (csrc/cuda/conv_relu_maxpool_forward.cu)
    flops, min_bytes = conv_bench.flops, conv_bench.min_bytes
    assert flops(c2, 128, "fwd", True) == 2 * 128 * 27 * 27 * 192 * 64 * 25
    assert flops(c2, 128, "bwd", True) == 2 * flops(c2, 128, "fwd", True)
    assert flops(c2, 128, "bwd", False) == flops(c2, 128, "fwd", True)
    x, w, y = 128 * 64 * 27 * 27, 192 * (64 * 25 + 1), 128 * 192 * 13 * 13
    assert min_bytes(c2, 128, "fwd", True, 2) == 2 * (x + w + y)
    assert min_bytes(c2, 128, "fwd+bwd", True, 4) == 4 * ((x + w + y) + (y + 2 * x + 2 * w))
    assert loss_bench.min_bytes(4, 10, "fwd+bwd", 4) == 2 * (4 * 10 * 4 + 4 * 8) + 4 * 10 * 4


def test_timer_medians_rotation_and_deadline():
    timer = Timer(torch.device("cpu"), min_run_time=0.02, rounds=3)
    used = []
    t = timer.time(lambda x: (used.append(x), time.sleep(0.002)), [(1,), (2,), (3,)])
    assert 0.0015 < t < 0.05 and set(used) == {1, 2, 3}
    order = []
    out = timer.compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, {"a": [()], "b": [()]})
    runs = [v for i, v in enumerate(order) if i == 0 or order[i - 1] != v]
    assert set(out) == {"a", "b"} and runs == ["a", "b", "a", "b"]  # rounds a b | b a | a b
    timer.check()
    late = Timer(torch.device("cpu"), time_limit=0.0)
    with pytest.raises(OutOfTime, match="time limit"):
        late.check()


def test_run_each_skips_after_the_deadline_and_records_errors():
    class T:
        def __init__(self):
            self.rows, self.notes = [], []

        def row(self, r):
            self.rows.append(r)

        def note(self, n):
            self.notes.append(n)

    def boom():
        raise RuntimeError("kernel exploded")

    failures, table = {}, T()
    items = [({"k": 1}, "one", lambda: [{"k": 1, "ok": True}]), ({"k": 2}, "two", boom),
             ({"k": 3}, "three", lambda: "too large")]
    out = bench_rows.run_each(items, Timer(torch.device("cpu")), table, failures)
    assert out == [{"k": 1, "ok": True}, {"k": 2, "error": "RuntimeError: kernel exploded"}, {"k": 3, "skipped": "too large"}]
    assert failures == {"two": "RuntimeError: kernel exploded"}
    out = bench_rows.run_each(items, Timer(torch.device("cpu"), time_limit=0.0), table, failures)
    assert all("time limit" in r["skipped"] for r in out) and "3 configurations skipped" in table.notes[-1]


def test_accuracy_rule_is_twice_pytorchs_own_error_against_float64():
    ref = torch.randn(10000, dtype=torch.float64)
    base = ref + 0.01 * torch.randn_like(ref)                  # PyTorch's own: ~1e-2 off
    checks.assert_as_accurate([ref + 0.015 * torch.randn_like(ref)], [base], [ref], ["y"], "bfloat16")
    with pytest.raises(AssertionError, match=r"dw: relative error \d\.\d+e-02 against float64, PyTorch's own \d\.\d+e-0[23]"):
        checks.assert_as_accurate([ref, ref + 0.05 * torch.randn_like(ref)], [ref, base], [ref, ref],
                                  ["y", "dw"], "bfloat16")
    # float32: PyTorch exact here; ours within the floors (outputs 1e-5, gradients 5e-3, for ReLU flips)
    checks.assert_as_accurate([ref * (1 + 1e-6), ref * (1 + 1e-3)], [ref, ref], [ref, ref], ["y", "dx"], "float32")
    with pytest.raises(AssertionError, match="y: relative error"):
        checks.assert_as_accurate([ref * (1 + 1e-4)], [ref], [ref], ["y"], "float32")
    failures = {}
    assert not checks.attempt(failures, "x", lambda: checks.assert_as_accurate([2 * ref], [ref], [ref], ["y"], "float32"))
    assert failures["x"].startswith("AssertionError: y: relative error 1.00e+00")
    assert checks.precision(torch.float32, torch.device("cpu")) == "float32"


def test_bfloat16_conv_is_checked_against_float64_not_against_eager_bfloat16(tmp_path):
    """Eager bf16 max-pool backward sends the gradient of bf16 ties to the first of them (~5% off
    float64); ours is verified by being as accurate as that, not by matching it."""
    out = tmp_path / "r.json"
    assert compare.main(["--sections", "conv", *TINY, "--layers", "conv2", "--dtypes", "bfloat16",
                         "--json", str(out)]) == 0
    assert all(r["speedup"] for r in json.loads(out.read_text())["rows"])


def test_speed_row_picks_the_fastest_verified_baseline():
    limits = {"matmul_tflops": {"float32": 1.0}, "copy_gbs": 10.0}
    r = bench_rows.speed_row({"dtype": "float32"}, "fwd", {"ours": 0.5, "nchw": 2.0, "nhwc": 1.0},
                             ("ours", "nchw", "nhwc", "compile"), limits, 1e12, 1e9, {"compile": "AssertionError"})
    assert r["best_baseline"] == "nhwc" and r["speedup"] == 2.0 and r["times_s"]["compile"] is None
    assert r["tflops"] == 2.0 and r["pct_matmul"] == 200.0 and r["gbs"] == 2.0 and r["pct_copy"] == 20.0
    assert r["failed"] == {"compile": "AssertionError"}
    # another version of ours (the conv kernels' version 1) is an A/B, never the baseline
    r = bench_rows.speed_row({"dtype": "float32"}, "fwd", {"ours": 0.5, "ours_v1": 0.6, "nchw": 2.0},
                             ("ours", "ours_v1", "nchw"), limits, 1e12, 1e9, {})
    assert r["best_baseline"] == "nchw" and r["speedup"] == 4.0 and report.version_gain(r) == pytest.approx(1.2)


def test_first_version_sets_the_version_for_the_call_only(monkeypatch):
    monkeypatch.setenv(conv_bench.VERSION_ENV, "2")
    seen = conv_bench.first_version(lambda: os.environ.get(conv_bench.VERSION_ENV))()
    assert seen == "1" and os.environ[conv_bench.VERSION_ENV] == "2"
    monkeypatch.delenv(conv_bench.VERSION_ENV)
    with pytest.raises(ZeroDivisionError):
        conv_bench.first_version(lambda: 1 / 0)()
    assert conv_bench.VERSION_ENV not in os.environ


def test_tiny_run_of_every_section(tmp_path, capsys):
    """Like --quick, cut to seconds: every section runs, verifies, times and writes its outputs."""
    out = tmp_path / "r.json"
    rc = compare.main([*TINY, "--json", str(out), "--markdown", str(tmp_path / "r.md"), "--save", str(tmp_path / "res")])
    text = capsys.readouterr().out
    assert rc == 0, text
    result = json.loads(out.read_text())
    m = result["machine"]
    for k in ("date", "card", "torch", "cuda", "pyalexnet", "build", "packages", "threads"):
        assert k in m
    assert set(result["limits"]["matmul_tflops"]) == {"float32"} and result["limits"]["copy_gbs"] > 0
    rows = result["rows"]
    conv = [r for r in rows if r["section"] == "conv"]
    assert [(r["layer"], r["pass"]) for r in conv] == [(lay, p) for lay in ("conv1", "conv2") for p in conv_bench.PASSES]
    for r in conv:
        assert set(r["times_s"]) == {"ours", "nchw", "nhwc"} and r["speedup"] > 0 and r["tflops"] > 0
        assert r["ours_layout"] == "nhwc"  # the layout the kernels compute in, on every device
    assert conv[2]["saved_bytes"]["ours"] < conv[2]["saved_bytes"]["nchw"]
    assert len([r for r in rows if r["section"] == "loss"]) == 4
    train = [r for r in rows if r["section"] == "train"]
    if "skipped" not in train[0]:  # pyalexnet.models present
        assert train[0]["images_per_s"]["custom"] > 0 and train[0]["peak_bytes"]["cudnn"] > 0
    assert "1. conv + ReLU + max-pool" in text and "every timed variant verified" in text
    for section, legend in report.LEGENDS.items():  # each table is followed by what its columns mean
        table = text.split(report.TITLES[section])[1]
        assert all(line in table for line in legend), section
        explained = " ".join(legend)
        for header, _, _ in report.COLUMNS[section]:  # every abbreviation of its headers is in it
            for word in ("%mm", "%copy", "o/eager", "c/cudnn", "v2 x", "speedup", "best", "compile", "nchw",
                         "nhwc", "eager", "TFLOP/s", "GB/s", "img/s", "peak MiB", "saved MiB"):
                assert word not in header or word in explained, (section, header, word)
    md = (tmp_path / "r.md").read_text()
    assert "| cifar | conv1 | 3 | float32 |" in md and "| 64 x 10 | float32 |" in md
    saved = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert len(saved) == 2 and saved[0].endswith(".json") and saved[1].endswith(".md")


def test_a_wrong_kernel_fails_verification_and_is_not_timed(monkeypatch, tmp_path, capsys):
    real = conv_bench.conv_relu_maxpool
    monkeypatch.setattr(conv_bench, "conv_relu_maxpool", lambda *a: 1.01 * real(*a))
    out = tmp_path / "r.json"
    rc = compare.main(["--sections", "conv", *TINY, "--layers", "conv2", "--json", str(out)])
    assert rc == 1
    rows = json.loads(out.read_text())["rows"]
    assert all(r["times_s"]["ours"] is None and r["speedup"] is None and "ours" in r["failed"] for r in rows)
    assert "ours FAILED verification" in capsys.readouterr().out


def test_rows_draw_the_same_inputs_in_every_run():
    """A row's inputs come from its key alone (a verification reproducible, a float32 near-tie not a
    failure by chance): the same key, the same draws whatever came before; another key, others."""
    key = dict(section="conv", variant="cifar", layer="conv2", batch=32, dtype="float32")
    checks.seed_row(key)
    first = torch.randn(64)
    torch.randn(1000)
    checks.seed_row(dict(key))
    assert torch.equal(torch.randn(64), first)
    checks.seed_row({**key, "batch": 128})
    assert not torch.equal(torch.randn(64), first)


def test_a_section_that_cannot_import_fails_the_run(tmp_path):
    """`python bench/compare.py` with pyalexnet.models unimportable: exit status 1 and the error, no
    skipped row and no exit 0."""
    hide = ("import runpy, sys; sys.modules['pyalexnet.models'] = None; "
            "sys.argv = ['bench/compare.py', '--sections', 'conv', '--help']; "
            "runpy.run_path('bench/compare.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", hide], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ModuleNotFoundError: import of pyalexnet.models halted" in r.stderr, r.stderr


@pytest.mark.parametrize("where", ("root", "elsewhere"))
def test_compare_runs_as_a_script_from_anywhere(where, tmp_path):
    """`python bench/compare.py` (the bench package, run as a script) from the root and from another
    folder; `python -m bench.compare` from the root."""
    cwd = REPO_ROOT if where == "root" else tmp_path
    commands = [[sys.executable, str(REPO_ROOT / "bench" / "compare.py"), "--help"]]
    if where == "root":
        commands.append([sys.executable, "-m", "bench.compare", "--help"])
    for cmd in commands:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "--sections" in r.stdout, r.stdout + r.stderr


def test_presets_and_filters():
    args, cfg = compare.parse(["--quick", "--device", "cpu"])
    assert cfg.variants == ["cifar"] and cfg.batches == [32] and cfg.compile_for(32, torch.float32)
    assert args.threads == 1 and compare.parse(["--quick", "--device", "cpu", "--threads", "2"])[0].threads == 2
    assert not cfg.compile_for((128, 10), torch.float32)  # quick: no compiled loss
    args, cfg = compare.parse(["--gpu-check", "--device", "cuda"])  # parsing needs no GPU
    assert cfg.batches == [128, 32, 256] and cfg.dtypes == [torch.bfloat16, torch.float32]
    assert cfg.variants[0] == "imagenet" and cfg.shapes[:2] == [(16384, 32768), (16384, 131072)]
    assert len(set(cfg.shapes)) == len(cfg.shapes) and list(cfg.train_batches) == ["imagenet", "cifar"]
    assert not cfg.compile_for(128, torch.bfloat16) and not cfg.compile_for((16384, 32768), torch.bfloat16)
    args, cfg = compare.parse(["--gpu-check", "--device", "cpu"])  # gpu_check.sh --rehearsal
    assert cfg.batches == [2] and cfg.layers == {"conv3"} and args.threads == 1
    args, cfg = compare.parse(["--gpu-check", "--device", "cpu", "--batches", "5", "--no-compile"])
    assert cfg.batches == [5] and not cfg.compile_for(32, torch.float32)
    args, cfg = compare.parse(["--device", "cpu"])
    assert cfg.variants == ["cifar", "imagenet"] and not cfg.layers and cfg.compile_for(1, torch.float32)
    assert (16384, 131072) in cfg.shapes and cfg.sets_for(2**30) == 1
    llc = machine.last_level_cache_bytes()
    one_set = 256 * 2**20  # a set larger than this is timed alone (some hosts report a larger LLC)
    assert cfg.sets is None and cfg.sets_for(1) == 64
    assert cfg.sets_for(llc // 4) == (8 if llc // 4 <= one_set else 1)
    assert cfg.sets_for(llc) == (2 if llc <= one_set else 1)
    assert compare.parse(["--device", "cpu", "--sets", "3"])[1].sets_for(1) == 3
    with pytest.raises(SystemExit):
        compare.parse(["--sections", "conv,nope"])


def _result():
    conv = [{"section": "conv", "variant": "cifar", "layer": "conv1", "batch": 8, "dtype": "float32", "pass": p,
             "times_s": {"ours": 1.0, "nchw": 2.0}, "speedup": 2.0, "best_baseline": "nchw", "pct_matmul": 10.0,
             "saved_bytes": {"ours": 2**20, "nchw": 2**22}} for p in conv_bench.PASSES]
    loss = [{"section": "loss", "N": 8, "C": 10, "dtype": "bfloat16", "pass": p, "times_s": {"ours": 1.0},
             "speedup": 0.5, "gbs": 1.0, "pct_copy": 5.0} for p in loss_bench.PASSES]
    train = [{"section": "train", "variant": "cifar", "batch": 4, "dtype": "float32", "times_s": {"ours": 1.0},
              "speedup": 1.2, "images_per_s": {"custom": 4.0, "cudnn": 2.6, "cudnn_nchw": 3.3},
              "peak_bytes": {"custom": 2**21, "cudnn": 2**22}}]
    machine = {"date": "2026-11-27T10:00:00+00:00", "card": "Test card", "torch": "2", "cuda": None,
               "cudnn": None, "pyalexnet": "0"}
    return {"machine": machine, "limits": {"matmul_tflops": {"float32": 1.0}, "copy_gbs": 10.0}, "mode": "quick",
            "rows": conv + loss + train + [{"section": "loss", "N": 1, "C": 1, "dtype": "float32", "skipped": "x"}]}


def test_markdown_summary():
    md = report.markdown(_result())
    assert md.startswith("# compare.py, 2026-11-27, Test card")
    assert "| cifar | conv1 | 8 | float32 | 2.00 | 2.00 | 2.00 | 10 | 1.0 / 4.0 |" in md
    assert "| 8 x 10 | bfloat16 | 0.50 | 0.50 | 1.0 (5%) |" in md
    assert "| cifar | 4 | float32 | 4 | 3 | 1.20 | 2.0 / 4.0 |" in md  # cudnn: its faster layout's 3.3


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    report.plot(_result(), str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.cuda
def test_tiny_run_on_the_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "r.json"
    assert compare.main([*TINY, "--device", "cuda", "--dtypes", "bfloat16,float32", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert all("times_s" in r or "skipped" in r for r in rows)
    conv = [r for r in rows if r["section"] == "conv" and "times_s" in r]
    assert conv and all(r["times_s"]["ours_v1"] and report.version_gain(r) for r in conv)


JUNIT = """<testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="1">
<testcase classname="tests.test_conv_relu_maxpool_cuda" name="test_alexnet_layers[imagenet_conv1-torch.bfloat16]" time="1.0"/>
<testcase classname="tests.test_conv_relu_maxpool_cuda" name="test_alexnet_layers[imagenet_conv2-torch.bfloat16]" time="1.0">
<failure message="AssertionError: out differs">trace</failure></testcase>
<testcase classname="tests.test_softmax_cross_entropy_cuda" name="test_large[none]" time="0.1"><skipped message="memory"/></testcase>
<testcase classname="tests.test_softmax_cross_entropy_cuda" name="test_current_stream" time="0.1"/>
</testsuite></testsuites>"""


def _gpu_check_work(tmp_path) -> Path:
    """A work folder as gpu_check.sh leaves it after a GPU run with one failing test and one racy kernel."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.tsv").write_text("step\tstatus\tseconds\tnote\nbuild\tok\t95\texit 0\n"
                                    "cuda_tests\tfailed\t60\texit 1\nsanitizer_memcheck\tok\t40\texit 0\n"
                                    "sanitizer_racecheck\tfailed\t50\texit 1\ntrain\tok\t20\texit 0\n"
                                    "compare\tok\t150\texit 1\n")
    (work / "machine.txt").write_text("date: 2026-12-02T16:00:00Z\nmode: gpu\ncard: NVIDIA H200, 143771 MiB, 580\n"
                                      "torch: 2.11.0+cu130 | CUDA 13.0 | cuDNN 91000\n")
    (work / "cuda_tests.xml").write_text(JUNIT)
    (work / "sanitizer_memcheck.log").write_text("========= ERROR SUMMARY: 0 errors\n")
    (work / "sanitizer_racecheck.log").write_text("========= ERROR SUMMARY: 2 errors\n")
    (work / "train.jsonl").write_text('{"epoch": 1, "test_acc": 0.4, "images_per_s": 900.0}\n'
                                      '{"epoch": 2, "test_acc": 0.55, "images_per_s": 1000.0}\n')
    (work / "compare.json").write_text(json.dumps({**_result(), "failures": {"conv x ours": "AssertionError"}}))
    return work


def test_gpu_summary_reads_what_gpu_check_leaves(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert gpu_summary.main([str(_gpu_check_work(tmp_path)), "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert capsys.readouterr().out.strip() == md.strip()
    assert md.startswith("# gpu_check, 2026-12-02T16:00:00Z, NVIDIA H200, 143771 MiB, 580 (gpu)")
    assert "| cuda_tests | failed | 60 | 2 passed, 1 failed, 1 skipped |" in md
    assert "| sanitizer_memcheck | ok | 40 | clean |" in md and "| sanitizer_racecheck | failed | 50 | 2 errors |" in md
    assert "| train | ok | 20 | 2 epochs: test acc 55.0%, 1000 img/s (last epoch) |" in md
    assert "| tests.test_conv_relu_maxpool_cuda::test_alexnet_layers | 1 | 1 | 0 |" in md
    assert "- FAILED tests.test_conv_relu_maxpool_cuda::test_alexnet_layers[imagenet_conv2-torch.bfloat16]: " \
           "AssertionError: out differs" in md
    assert "conv     float32   fwd+bwd     1     2.00" in md and "FAILED conv x ours: AssertionError" in md
    assert "train cifar batch 4 float32: images/s custom 4, cudnn 3; peak MiB custom 2, cudnn 4" in md
    r = json.loads((out / "gpu-check.json").read_text())
    assert r["tests"]["cases"]["tests.test_softmax_cross_entropy_cuda::test_large[none]"] == "skipped"
    assert r["sanitizer"]["racecheck"]["errors"] == 2 and r["sanitizer"]["memcheck"]["verdict"] == "clean"
    assert r["machine"]["card"].startswith("NVIDIA H200") and r["compare"]["rows"]
    assert gpu_summary.check_limits(out) == []


def test_gpu_summary_of_a_rehearsal_and_an_unsupported_sanitizer(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.tsv").write_text("step\tstatus\tseconds\tnote\nsanitizer_memcheck\tskipped\t0\t"
                                    "no compute-sanitizer\nsanitizer_racecheck\tfailed\t3\texit 1\n")
    (work / "sanitizer_racecheck.log").write_text("Device not supported\n")
    (work / "cuda_tests.xml").write_text("<testsuites><testsuite")  # cut off by a kill
    md = gpu_summary.markdown(gpu_summary.collect(work))
    assert "unreadable junit XML" in md
    (work / "steps.tsv").write_text("step\tstatus\tseconds\tnote\ncuda_tests\ttimeout\t150\texit 124\n")
    (work / "cuda_tests.xml").write_text(JUNIT)
    (work / "cuda_tests.log").write_text("....\nKeyboardInterrupt\n= 2 passed, 1 failed in 150.2s =\n")
    assert ("| cuda_tests | timeout | 150 | 2 passed, 1 failed, 1 skipped (stopped at its cap; pytest counted "
            "2 passed, 1 failed in 150.2s) |") in gpu_summary.markdown(gpu_summary.collect(work))
    (work / "steps.tsv").write_text("step\tstatus\tseconds\tnote\nsanitizer_memcheck\tskipped\t0\t"
                                    "no compute-sanitizer\nsanitizer_racecheck\tfailed\t3\texit 1\n")
    (work / "cuda_tests.xml").write_text("<testsuites><testsuite")
    md = gpu_summary.markdown(gpu_summary.collect(work))
    assert "| sanitizer_memcheck | skipped | 0 | not run: no compute-sanitizer |" in md
    assert "not run: the device is not supported by compute-sanitizer here" in md
    assert "unreadable junit XML" in gpu_summary.collect(work)["tests"]["error"]


def test_check_limits_of_what_a_device_run_returns(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    (out / "summary.md").write_text("x")
    (out / "a" / "b" / "deep-enough.txt").write_text("x")
    assert gpu_summary.check_limits(out) == []
    assert gpu_summary.main([str(out), "--check-limits"]) == 0
    (out / "a" / "b" / "c").mkdir()
    (out / "a" / "b" / "c" / "too-deep.txt").write_text("x")
    (out / "bad name.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:
        f.truncate(gpu_summary.MAX_FILE_BYTES + 1)
    for i in range(6):
        (out / f"f{i}").write_text("x")
    problems = " | ".join(gpu_summary.check_limits(out))
    assert "too-deep.txt: more than 2 folders down" in problems and "bad name.txt: a name outside" in problems
    assert "big.bin: 16777217 bytes, over 16777216" in problems and "11 files, over 8" in problems
    (out / "summary.md").unlink()
    assert "no summary.md" in " | ".join(gpu_summary.check_limits(out))
    assert gpu_summary.main([str(out), "--check-limits"]) == 1
    assert "FAILED the limits" in capsys.readouterr().out


def test_version_gain_in_the_summaries(tmp_path, capsys):
    """A GPU run times the conv kernels' version 1 beside ours: the markdown gets a v2 gain column
    and gpu_summary a line per dtype and pass."""
    result = _result()
    for r in result["rows"]:
        if r["section"] == "conv":
            r["times_s"]["ours_v1"] = 1.5 * r["times_s"]["ours"]
    md = report.markdown(result)
    assert "v2 gain fwd / fwd+bwd |" in md and "| 1.50 / 1.50 |" in md
    assert "v2 gain" not in report.markdown(_result())
    (tmp_path / "steps.tsv").write_text("step\tstatus\tseconds\tnote\ncompare\tok\t100\t\n")
    (tmp_path / "compare.json").write_text(json.dumps({**result, "failures": {}}))
    assert gpu_summary.main([str(tmp_path)]) == 0
    assert "conv float32 fwd+bwd: kernels version 2 / version 1, speed ratio geomean 1.50" in capsys.readouterr().out


def test_input_pipeline_bench_checks_then_times_both(tmp_path, capsys):
    """bench/input_pipeline.py on a tiny generated tree: both pipelines verified, then timed."""
    torchvision_or_skip()
    from bench import input_pipeline
    out = tmp_path / "r.json"
    assert input_pipeline.main(["--images", "12", "--rounds", "1", "--workers", "1", "--batch-size", "4",
                                "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 11 and set(r["images_per_s"]) == {"ours", "torchvision"} and r["speedup"] > 0
    assert "ours / theirs" in capsys.readouterr().out


def test_busy_cores_run_for_the_block_and_are_killed_after_it():
    """--busy N: N spinning processes for the whole run, gone afterwards even when the run fails;
    a count that leaves no core free, or below zero, is refused before anything starts."""
    from bench.load import busy_cores
    with pytest.raises(RuntimeError, match="inside"):
        with busy_cores(1) as procs:
            assert len(procs) == 1 and procs[0].poll() is None
            time.sleep(0.2)
            assert procs[0].poll() is None  # still spinning
            raise RuntimeError("inside")
    assert procs[0].poll() is not None
    cores = os.cpu_count() or 1
    for n in (-1, cores):
        with pytest.raises(ValueError, match="--busy"):
            with busy_cores(n):
                pass
        with pytest.raises(SystemExit):
            compare.parse(["--busy", str(n)])


def test_a_run_under_load_says_so(tmp_path, capsys):
    """The table's header, the JSON and the markdown record how many cores were kept busy."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a core to keep busy and one to run on")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = compare.main([*TINY, "--sections", "loss", "--shapes", "64x10", "--busy", "1", "--json", str(out),
                       "--markdown", str(md)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "1 CPU core(s) kept busy" in text.splitlines()[0]
    assert json.loads(out.read_text())["busy_cores"] == 1
    assert "kept busy by other processes (--busy)" in md.read_text()
