"""The trainer `python -m pyalexnet.train`: short runs on a few hundred generated images (summary,
report, metrics log, plots, checkpoints, resume, eval-only, transfer learning, errors); the
accuracy bars are the `slow` tests at the end (`pytest -m slow`)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyalexnet import checkpoint, config, evaluate, logs, synthetic, train
from pyalexnet.models import alexnet

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_DIR = REPO_ROOT.parent / "shared" / "datasets" / "cifar10"
TINY = ["--synthetic-size", "200", "--batch-size", "50", "--no-progress"]


def run(*args: str) -> dict:
    return train.main(TINY + list(args))


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "pyalexnet.train", "--help"], capture_output=True,
                         text=True, cwd="/", check=True).stdout
    for f in ("--dataset", "--backend", "--variant", "--epochs", "--optimizer", "--schedule", "--bf16",
              "--channels-last", "--compile", "--deterministic", "--checkpoint-dir", "--resume",
              "--eval-only", "--log", "--plot", "--pretrained", "--freeze-features", "--label-smoothing"):
        assert f in out, f
    assert "python -m pyalexnet.train --dataset cifar10" in out  # the docstring's examples


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--help"])
    text = capsys.readouterr().out
    blocks = {}  # option -> its help text, from the line that names it to the next option's
    for block in re.split(r"\n(?=  --)", text.split("options:")[1]):
        blocks[block.split()[0].rstrip(",")] = " ".join(block.split())
    for f in dataclasses.fields(config.Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in blocks, flag
        if f.default is not None:
            assert re.search(rf"\(default:? {re.escape(str(f.default))}\)", blocks[flag]), (flag, blocks[flag])
        else:
            assert "default" in blocks[flag] or f.name in ("data_dir", "pretrained", "resume", "log", "step_log",
                                                            "plot", "checkpoint_dir", "tensorboard"), (flag, blocks[flag])


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_only_on_a_terminal(monkeypatch, terminal):
    """By default the bar shows only when stderr is a terminal: in a log file it would be a stream of
    carriage-return fragments. --progress / --no-progress decide either way."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert config.parse_args([]).progress is None
    bar = logs.progress(range(3), None, 1, 1, 0, 3)
    assert (type(bar).__name__ == "tqdm") == terminal
    assert type(logs.progress(range(3), True, 1, 1, 0, 3)).__name__ == "tqdm"
    assert type(logs.progress(range(3), False, 1, 1, 0, 3)).__name__ != "tqdm"
    assert list(logs.progress(range(3), None, 1, 1, 0, 3)) == [0, 1, 2]


def test_short_run_prints_report_and_summary_and_writes_log_plots_checkpoints(tmp_path, capsys):
    ck = tmp_path / "ck"
    s = run("--epochs", "2", "--log", str(tmp_path / "m.csv"), "--plot", str(tmp_path / "c.png"),
            "--checkpoint-dir", str(ck))
    out = capsys.readouterr().out
    assert s["epochs"] == 2 and s["backend"] == "custom" and s["variant"] == "cifar" and s["device"] == "cpu"
    cm = s["confusion_matrix"]
    assert cm.sum() == 40 and s["images_per_s"] > 0
    assert s["final_test_acc"] == pytest.approx(cm.diag().sum().item() / 40)  # the matrix's accuracy
    assert s["final_test_acc"] <= s["final_test_top5"] and s["test_split"] == "40 generated images"
    for needle in ("precision  recall     f1  support", "checkerboard", "macro avg",
                   "confusion matrix (rows: true class", "summary: dataset synthetic", "epoch   2/2"):
        assert needle in out, needle
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_acc,test_loss,test_acc") and len(rows) == 3
    for png in ("c.png", "c-confusion.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no temporary files left
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "ckpt-e0001-s000000004.pt", "ckpt-e0002-s000000008.pt"]
    last = torch.load(ck / "ckpt-e0002-s000000008.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2 and last["classes"] == list(synthetic.CLASSES)
    assert last["history"][-1]["test_acc"] == s["final_test_acc"]  # the last epoch's is the final one
    assert last["history"][-1]["test_top5"] == s["final_test_top5"]
    assert "top-5" in out and "test_split 40 generated images" in out

    # resume the latest checkpoint for one more epoch: the first two epochs are kept, not redone
    s3 = run("--epochs", "3", "--checkpoint-dir", str(ck), "--resume", "latest",
             "--log", str(tmp_path / "m.jsonl"))
    assert s3["epochs"] == 3
    resumed = torch.load(checkpoint.list_checkpoints(ck)[0], weights_only=True)
    assert resumed["history"][:2] == last["history"] and resumed["step"] == 3 * 4
    assert [json.loads(l)["epoch"] for l in (tmp_path / "m.jsonl").read_text().splitlines()] == [3]

    # eval-only from that checkpoint: the same accuracy as the end of training
    ev = run("--eval-only", "--resume", str(ck))
    assert ev["epochs"] == 3 and ev["final_test_acc"] == s3["final_test_acc"]


def _scalars(folder: Path) -> dict:
    """{tag: [(step, value)]} of the TensorBoard event files in folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_follow_the_run_and_its_resume(tmp_path):
    pytest.importorskip("tensorboard")
    tb, ck = tmp_path / "tb", tmp_path / "ck"
    run("--epochs", "2", "--tensorboard", str(tb), "--checkpoint-dir", str(ck))
    hist = torch.load(checkpoint.list_checkpoints(ck)[0], weights_only=True)["history"]
    s = _scalars(tb)
    for tag, key in (("accuracy/test", "test_acc"), ("accuracy/test_top5", "test_top5"), ("loss/train", "train_loss"),
                     ("lr", "lr"), ("images_per_s", "images_per_s")):
        assert [step for step, _ in s[tag]] == [4, 8], tag  # 4 steps an epoch
        assert [v for _, v in s[tag]] == pytest.approx([r[key] for r in hist], rel=1e-6), tag
    assert "loss/train_running" in s
    # resumed from the first epoch's checkpoint: the second epoch's events are dropped, then redone
    first = ck / "ckpt-e0001-s000000004.pt"
    run("--epochs", "3", "--tensorboard", str(tb), "--checkpoint-dir", str(ck), "--resume", str(first))
    s = _scalars(tb)
    assert [step for step, _ in s["accuracy/test"]] == [4, 8, 12]


def test_cudnn_backend_bf16_channels_last_adamw_cosine():
    s = run("--epochs", "1", "--backend", "cudnn", "--bf16", "--channels-last", "--optimizer", "adamw",
            "--lr", "1e-3", "--schedule", "cosine")
    assert s["backend"] == "cudnn" and s["bf16"] and math.isfinite(s["test_loss"])
    s = run("--epochs", "1", "--bf16", "--channels-last")
    assert s["backend"] == "custom" and s["bf16"] and math.isfinite(s["test_loss"])


def test_lr_schedule():
    f = [train.lr_factor(s, 100, 10, "onecycle") for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10] == 1.0 and f[99] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert train.lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert train.lr_factor(99, 100, 10, "constant") == 1.0
    step = [train.lr_factor(s, 1000, 5, "step", 30, 0.1) for s in (4, 5, 34, 35, 64, 65)]
    assert step == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.01])  # warm-up, then x0.1 every 30 steps


def test_recipe_imagenet_sets_the_defaults_the_command_line_leaves():
    cfg = config.parse_args(["--recipe", "imagenet"])
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay,
            cfg.schedule, cfg.lr_step_epochs, cfg.lr_gamma, cfg.warmup_epochs, cfg.label_smoothing) == (
        90, 256, "sgd", 0.01, 0.9, False, 1e-4, "step", 30, 0.1, 0.0, 0.0)
    cfg = config.parse_args(["--recipe", "imagenet", "--lr", "0.02", "--nesterov", "--epochs", "5"])
    assert (cfg.lr, cfg.nesterov, cfg.epochs, cfg.weight_decay) == (0.02, True, 5, 1e-4)  # given flags win
    assert config.parse_args([]) == config.Config()  # our recipe: the defaults as listed


def test_recipe_imagenet_runs_its_step_schedule(tmp_path):
    """Four steps an epoch, a drop every epoch: the second epoch trains at a tenth of the first's lr."""
    log = tmp_path / "m.jsonl"
    s = run("--recipe", "imagenet", "--epochs", "2", "--lr-step-epochs", "1", "--log", str(log))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.001]) and s["epochs"] == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint({"a": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint({"a": torch.zeros(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def test_pretrained_torchvision_state_dict_replaces_the_last_layer(tmp_path):
    src = alexnet(1000)                      # the imagenet variant: torchvision's keys and shapes
    torch.save(src.state_dict(), tmp_path / "tv.pth")
    dst = alexnet(5)
    lines = checkpoint.load_pretrained(dst, tmp_path / "tv.pth")
    assert "replaced the last layer (classifier.6: (1000, 4096) -> (5, 4096))" in "\n".join(lines)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]) == (not k.startswith("classifier.6.")), k
    with pytest.raises(checkpoint.CheckpointError, match=r"tv.pth: weights do not fit this AlexNet variant"):
        checkpoint.load_pretrained(alexnet(5, "cifar"), tmp_path / "tv.pth")


def test_bad_files_give_errors_that_name_them(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(checkpoint.CheckpointError, match=r"junk.pt: not a checkpoint that torch.load"):
        run("--eval-only", "--pretrained", str(tmp_path / "junk.pt"))
    with pytest.raises(checkpoint.CheckpointError, match=r"missing.pt: no such checkpoint file or folder"):
        run("--resume", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        run("--eval-only")
    r = subprocess.run([sys.executable, "-m", "pyalexnet.train", "--dataset", "cifar10", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True, cwd="/")
    assert r.returncode != 0 and f"error: {tmp_path}/data_batch_1: no such file" in r.stderr


class _Payload:
    """An object whose unpickling runs code (touches a file): what a crafted checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_carrying_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "ran"
    for name in ("ckpt-e0001-s000000004.pt", "evil.pth"):
        torch.save({"model": alexnet(10, "cifar").state_dict(), "extra": _Payload(marker)}, tmp_path / name)
    for args in (["--resume", str(tmp_path / "ckpt-e0001-s000000004.pt")], ["--pretrained", str(tmp_path / "evil.pth")]):
        with pytest.raises(checkpoint.CheckpointError, match=r"not a checkpoint that torch.load\(weights_only=True\)"):
            run("--epochs", "1", *args)
    with pytest.raises(checkpoint.CheckpointError, match=r"no readable checkpoint in it"):
        run("--epochs", "1", "--resume", str(tmp_path))  # the folder: its one checkpoint refused
    assert not marker.exists()


def _write_pairs_task(root: Path, n: int, seed: int) -> None:
    """Another dataset for transfer learning: generated shapes as PNG files of five classes, each
    two of the ten shape kinds (disk or square, ring or frame, ...), at other positions and colours."""
    from PIL import Image

    x, y = synthetic.generate(n, seed=seed)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"pair{label.item() // 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.png")


@pytest.mark.thorough
def test_fine_tuning_beats_training_from_scratch(tmp_path):
    pytest.importorskip("PIL")
    train.main(["--synthetic-size", "1600", "--epochs", "3", "--batch-size", "64", "--no-progress",
                "--checkpoint-dir", str(tmp_path / "pre")])
    _write_pairs_task(tmp_path / "pairs", 500, seed=77)
    common = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "pairs"), "--variant", "cifar",
              "--image-size", "32", "--holdout", "200", "--epochs", "2", "--batch-size", "50",
              "--no-progress"]
    scratch = train.main(common)
    tuned = train.main(common + ["--pretrained", str(tmp_path / "pre")])
    frozen = train.main(common + ["--pretrained", str(tmp_path / "pre"), "--freeze-features"])
    print("scratch", scratch["final_test_acc"], "fine-tuned", tuned["final_test_acc"], "frozen",
          frozen["final_test_acc"])
    assert tuned["final_test_acc"] > scratch["final_test_acc"] + 0.1
    assert frozen["final_test_acc"] > scratch["final_test_acc"] + 0.1


def test_freeze_features_trains_only_the_classifier(tmp_path):
    ck = tmp_path / "a"
    run("--epochs", "1", "--checkpoint-dir", str(ck))
    run("--epochs", "1", "--checkpoint-dir", str(tmp_path / "b"), "--pretrained", str(ck), "--freeze-features")
    a = torch.load(checkpoint.list_checkpoints(ck)[0], weights_only=True)["model"]
    b = torch.load(checkpoint.list_checkpoints(tmp_path / "b")[0], weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]) == k.startswith("features."), k


def test_confusion_report_numbers():
    cm = evaluate.confusion_matrix(torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0]), 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    m = evaluate.per_class_metrics(cm)
    assert m["precision"].tolist() == [1.0, 0.5, 2 / 3] and m["recall"].tolist() == [0.5, 1.0, 2 / 3]
    assert m["f1"][0].item() == pytest.approx(2 / 3)
    report = evaluate.classification_report(cm, ["a", "b", "c"])
    assert "accuracy" in report and "0.667" in report
    assert "2 c   0   1   2" in evaluate.format_confusion(cm, ["a", "b", "c"])


def test_top5_accuracy_by_hand():
    """Seven classes, four rows: the target's rank among the logits is 1, 5, 6 and 7, so two of four
    are in the top 5 (and one in the top 1); with fewer classes than k every row counts."""
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 6],    # target 0: rank 1
                           [0.0, 1, 2, 3, 4, 5, 6],    # target 2: ranks 6 5 4 3 [2] -> 5th
                           [6.0, 5, 4, 3, 2, 1, 0],    # target 5: 6th
                           [6.0, 5, 4, 3, 2, 1, 0]])   # target 6: 7th
    target = torch.tensor([0, 2, 5, 6])
    assert evaluate.topk_accuracy(logits, target, 5) == 0.5
    assert evaluate.topk_accuracy(logits, target, 1) == 0.25
    assert evaluate.topk_accuracy(logits[:, :3], torch.tensor([0, 2, 1, 2]), 5) == 1.0
    assert math.isnan(evaluate.topk_accuracy(logits[:0], target[:0], 5))


# ------------------------------------------------------------------------------------------------
# Accuracy bars (slow: `pytest -m slow`)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_run_is_far_above_chance_in_two_minutes():
    s = train.main([])
    assert s["final_test_acc"] > 0.6 and s["wall_seconds"] < 120, s


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR_DIR / "data_batch_1").exists(), reason=f"CIFAR-10 not in {CIFAR_DIR}")
@pytest.mark.parametrize("backend", ["custom", "cudnn"])
def test_cifar10_ten_epochs_beat_the_article(backend):
    s = train.main(["--dataset", "cifar10", "--data-dir", str(CIFAR_DIR), "--backend", backend,
                    "--no-progress"])
    assert s["final_test_acc"] > 0.80, s
    # the budget on the project's 2-core CPU (an idle machine: timings of a loaded one say nothing)
    assert s["device"] != "cpu" or os.cpu_count() != 2 or s["wall_seconds"] < 20 * 60, s


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_reaches_90_percent():
    s = train.main(["--dataset", "fashion-mnist", "--epochs", "3", "--no-progress"])
    assert s["final_test_acc"] >= 0.90, s
