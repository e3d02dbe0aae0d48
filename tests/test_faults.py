"""The trainer under faults and at scale (issue 8): exact resume after SIGKILL, SIGTERM and SIGINT;
checkpoint rotation and a corrupt newest checkpoint; two gloo processes through torchrun against one
process given the combined batch, and a resumed two-process run; nonsense on the command line.

Runs are short (a few hundred generated images, batches of 16-32) in deterministic mode on the CPU
with one thread per process, so that an interrupted-and-resumed run must equal the uninterrupted one
bit for bit: every step's loss and every final weight.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyalexnet import checkpoint, logs, train

# 360 training images in batches of 24: 15 steps an epoch, 45 in all.
RUN = ["--synthetic-size", "360", "--batch-size", "24", "--epochs", "3", "--deterministic", "--threads", "1",
       "--no-progress", "--lr", "0.02"]
STEPS = 45


def trainer(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyalexnet.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=kw.get("cwd", "/"))


def steps_logged(path: Path) -> dict[int, float]:
    """step -> loss from a step log (the last row of a step wins: a resumed run redoes steps)."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[r["step"]] = r["loss"]
    return rows


def wait_for_steps(proc: subprocess.Popen, log: Path, n: int, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while len(steps_logged(log)) < n:
        assert proc.poll() is None, f"the run ended before step {n}: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, f"no step {n} after {timeout} s"
        time.sleep(0.01)


def final_weights(ck: Path) -> dict:
    newest = checkpoint.list_checkpoints(ck)[0]
    c = torch.load(newest, weights_only=True)
    assert c["step"] == STEPS and c["batch"] == 0, newest
    return c


def assert_same_run(a: dict, b: dict, log_a: Path, log_b: Path) -> None:
    la, lb = steps_logged(log_a), steps_logged(log_b)
    assert sorted(la) == list(range(1, STEPS + 1)) and la == lb, "per-step losses differ"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]), i
    assert a["history"] == b["history"] or [
        {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in a["history"]] == [
        {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in b["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its final checkpoint and its step log."""
    d = tmp_path_factory.mktemp("reference")
    p = trainer(*RUN, "--checkpoint-dir", str(d / "ck"), "--step-log", str(d / "steps.jsonl"))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return final_weights(d / "ck"), d / "steps.jsonl"


@pytest.mark.thorough
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, reference):
    ck, log = tmp_path / "ck", tmp_path / "steps.jsonl"
    p = trainer(*RUN, "--checkpoint-dir", str(ck), "--checkpoint-every", "4", "--step-log", str(log))
    wait_for_steps(p, log, 22)  # past the checkpoint at step 20, mid-epoch 2
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    ckpts = checkpoint.list_checkpoints(ck)
    assert ckpts and not [f for f in ck.iterdir() if f.name.endswith(".tmp")]
    killed_at = torch.load(ckpts[0], weights_only=True)
    assert 0 < killed_at["step"] < STEPS and killed_at["batch"] > 0, "not a mid-epoch checkpoint"
    assert len(steps_logged(log)) > killed_at["step"]  # work after the checkpoint was lost ...

    s = train.main(RUN + ["--checkpoint-dir", str(ck), "--step-log", str(log), "--resume", "latest"])
    assert s["epochs"] == 3 and s["step"] == STEPS
    assert_same_run(reference[0], final_weights(ck), reference[1], log)  # ... and redone identically


@pytest.mark.thorough
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_writes_a_checkpoint_and_exits(tmp_path, reference, sig):
    ck, log = tmp_path / "ck", tmp_path / "steps.jsonl"
    p = trainer(*RUN, "--checkpoint-dir", str(ck), "--step-log", str(log))
    wait_for_steps(p, log, 7)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    assert f"{sig.name}: stopped after step" in err and "--resume latest" in err and "Traceback" not in err
    c = torch.load(checkpoint.list_checkpoints(ck)[0], weights_only=True)
    assert c["step"] == len(steps_logged(log)) and c["step"] < STEPS  # nothing lost, nothing extra
    s = train.main(RUN + ["--checkpoint-dir", str(ck), "--step-log", str(log), "--resume", "latest"])
    assert s["step"] == STEPS
    assert_same_run(reference[0], final_weights(ck), reference[1], log)


def test_signal_without_checkpoint_dir_goes_to_checkpoints(tmp_path):
    log = tmp_path / "steps.jsonl"
    p = trainer(*RUN, "--step-log", str(log), cwd=tmp_path)
    wait_for_steps(p, log, 3)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert checkpoint.list_checkpoints(tmp_path / "checkpoints"), err


def test_checkpoint_every_without_a_folder_writes_to_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train.main(RUN + ["--epochs", "1", "--checkpoint-every", "10"])
    assert [f.name for f in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [
        "ckpt-e0001-s000000015.pt", "ckpt-e0001-s000000010.pt"]


@pytest.mark.thorough
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, reference, capsys):
    ck, log = tmp_path / "ck", tmp_path / "steps.jsonl"
    s = train.main(RUN + ["--checkpoint-dir", str(ck), "--checkpoint-every", "5", "--keep-checkpoints", "2",
                          "--step-log", str(log)])
    assert s["step"] == STEPS
    ckpts = checkpoint.list_checkpoints(ck)
    assert [f.name for f in ckpts] == ["ckpt-e0003-s000000045.pt", "ckpt-e0003-s000000040.pt"]
    assert sorted(f.name for f in ck.iterdir()) == sorted([f.name for f in ckpts] + ["best.pt"])
    data = ckpts[0].read_bytes()
    ckpts[0].write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    capsys.readouterr()
    s = train.main(RUN + ["--checkpoint-dir", str(ck), "--step-log", str(log), "--resume", "latest"])
    err = capsys.readouterr().err
    assert "ckpt-e0003-s000000045.pt" in err and "skipping an unreadable checkpoint" in err
    assert "resumed from" in capsys.readouterr().out or True
    assert_same_run(reference[0], final_weights(ck), reference[1], log)
    # an explicit file that is corrupt is an error naming it
    ckpts = checkpoint.list_checkpoints(ck)
    ckpts[0].write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=ckpts[0].name):
        train.cli(RUN + ["--resume", str(ckpts[0])])


def test_checkpoint_holds_everything_a_run_needs(tmp_path):
    ck = tmp_path / "ck"
    train.main(RUN + ["--epochs", "1", "--checkpoint-dir", str(ck), "--checkpoint-every", "4"])
    c = torch.load(checkpoint.list_checkpoints(ck)[-1], weights_only=True)  # the oldest kept: mid-epoch
    assert c["batch"] > 0 and c["epoch"] == 0
    for key in ("model", "optimizer", "config", "epoch", "step", "batch", "epoch_state", "rng", "best_acc",
                "history", "world_size", "batch_size", "classes", "variant"):
        assert key in c, key
    assert set(c["rng"][0]) >= {"torch", "python", "numpy"}
    es = c["epoch_state"]
    assert sorted(es["order"].tolist()) == list(range(360)) and es["gen"].dtype == torch.uint8
    # a script's way in: the folder's newest checkpoint into a fresh model
    model = train.alexnet(10, "cifar")
    state = checkpoint.load_checkpoint(ck, model)
    newest = torch.load(checkpoint.list_checkpoints(ck)[0], weights_only=True)
    assert state.step == newest["step"] == 15 and state.batch == 0
    assert torch.equal(model.state_dict()["classifier.6.weight"], newest["model"]["classifier.6.weight"])


def test_resume_refuses_another_batch_size(tmp_path):
    ck = tmp_path / "ck"
    train.main(RUN + ["--epochs", "1", "--checkpoint-dir", str(ck)])
    with pytest.raises(SystemExit, match=r"--batch-size 24 on 1 process\(es\); this one has --batch-size 12"):
        train.cli(RUN + ["--batch-size", "12", "--checkpoint-dir", str(ck), "--resume", "latest"])


def test_logs_keep_only_the_work_the_checkpoint_holds(tmp_path):
    log = tmp_path / "m.csv"
    log.write_text("epoch,train_loss\n1,2.0\n2,1.5\n3,1.")  # epoch 3 after the checkpoint, cut short
    logs.MetricsLog(str(log)).drop_after("epoch", 2)
    assert log.read_text().splitlines() == ["epoch,train_loss", "1,2.0", "2,1.5"]
    steps = tmp_path / "s.jsonl"
    steps.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    logs.MetricsLog(str(steps)).drop_after("step", 2)
    assert steps.read_text() == '{"step": 1}\n{"step": 2}\n'


# ------------------------------------------------------------------------------------------------
# Two processes through torchrun (gloo on the CPU)
# ------------------------------------------------------------------------------------------------
DDP_RUN = ["--synthetic-size", "200", "--epochs", "2", "--no-bf16", "--dropout", "0", "--no-progress",
           "--lr", "0.02"]


def torchrun(*args: str, n: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                        "-m", "pyalexnet.train", *args], capture_output=True, text=True, cwd="/", env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.thorough
@pytest.mark.parametrize("images", [32, 13], ids=["16+16", "7+6"])
def test_two_gloo_processes_match_one_process_with_the_combined_batch(tmp_path, images):
    """One global batch, even (16 + 16) or not (7 + 6: each rank's loss weighted by its share), with
    SyncBatchNorm2d's global statistics: the step of two processes is the step of one process given
    the combined batch, to float rounding. (One step: over several, rounding-size differences flip
    near-ties of max-pool windows, which route a whole gradient elsewhere; after 14 steps the two
    runs differ by ~1e-3 of the weights' scale, as two float orders of one run would.)"""
    args = ["--synthetic-size", str(images), "--epochs", "1", "--no-bf16", "--dropout", "0", "--no-progress",
            "--lr", "0.02", "--warmup-epochs", "0", "--schedule", "constant"]
    p = torchrun(*args, "--batch-size", "16", "--checkpoint-dir", str(tmp_path / "two"))
    assert "x 2 processes" in p.stdout and p.stdout.count("summary:") == 1  # rank 0 alone reports
    one = train.main(args + ["--batch-size", "32", "--threads", "1", "--checkpoint-dir", str(tmp_path / "one")])
    assert one["step"] == 1
    a = torch.load(checkpoint.list_checkpoints(tmp_path / "two")[0], weights_only=True)
    b = torch.load(checkpoint.list_checkpoints(tmp_path / "one")[0], weights_only=True)
    assert a["world_size"] == 2 and a["step"] == b["step"] == 1
    torch.manual_seed(0)  # the initial weights (seed 0): the step moved the tensors
    init = train.alexnet(10, "cifar").state_dict()
    moved = 0
    for k in b["model"]:
        if b["model"][k].is_floating_point():
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
            moved += not torch.equal(b["model"][k], init[k])
    assert moved >= 20
    assert a["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-6)
    assert a["history"][0]["train_acc"] == b["history"][0]["train_acc"]


@pytest.mark.thorough
def test_resumed_two_process_run_continues_exactly(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    torchrun(*DDP_RUN, "--batch-size", "16", "--checkpoint-dir", str(whole))
    torchrun(*DDP_RUN, "--batch-size", "16", "--epochs", "1", "--checkpoint-dir", str(part))
    p = torchrun(*DDP_RUN, "--batch-size", "16", "--checkpoint-dir", str(part), "--resume", "latest")
    assert "resumed from" in p.stdout
    a = torch.load(checkpoint.list_checkpoints(whole)[0], weights_only=True)
    b = torch.load(checkpoint.list_checkpoints(part)[0], weights_only=True)
    assert a["step"] == b["step"] == 14
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# ------------------------------------------------------------------------------------------------
# Nonsense on the command line: one line saying what was wrong and what is accepted
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0: expected a positive number"),
    (["--lr", "-0.1"], "--lr -0.1: expected a positive learning rate"),
    (["--epochs", "-1"], "--epochs -1: expected 0"),
    (["--label-smoothing", "1.5"], r"--label-smoothing 1.5: expected a value in \[0, 1\]"),
    (["--dropout", "1"], r"--dropout 1.0: expected a probability in \[0, 1\)"),
    (["--momentum", "-0.5"], r"--momentum -0.5: expected a value in \[0, 1\)"),
    (["--threads", "0"], "--threads 0: expected 1 or more"),
    (["--checkpoint-every", "-3"], "--checkpoint-every -3: expected 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints 0: expected 1 or more"),
    (["--synthetic-size", "3"], "--synthetic-size 3: expected at least 10"),
    (["--stream"], "--stream reads image trees: --dataset imagefolder, not synthetic"),
    (["--workers", "-1"], "--workers -1: expected 0 or more"),
    (["--lr-step-epochs", "0"], "--lr-step-epochs 0: expected 1 or more"),
    (["--lr-gamma", "0"], r"--lr-gamma 0.0: expected a factor in \(0, 1\]"),
    (["--dataset", "imagefolder", "--stream", "--data-dir", "/nonexistent/tree"], "/nonexistent/tree: no such folder"),
    (["--device", "tpu"], "--device 'tpu': expected cpu, cuda, cuda:N or auto"),
    (["--eval-only"], "--eval-only needs weights"),
    (["--freeze-features"], "--freeze-features needs --pretrained"),
    (["--variant", "imagenet"], "--variant imagenet takes 224x224 images; --dataset synthetic"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--resume", "/nonexistent/ck.pt"], "/nonexistent/ck.pt: no such checkpoint file or folder"),
    (["--pretrained", "/nonexistent/w.pth"], "/nonexistent/w.pth: no such file"),
])
def test_nonsense_flags_are_refused_with_a_message(args, message):
    with pytest.raises(SystemExit, match=message) as e:
        train.cli(["--no-progress", "--synthetic-size", "20", "--epochs", "1"] + args)
    assert str(e.value.code).startswith("error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_asking_for_a_gpu_without_one_says_so():
    with pytest.raises(SystemExit, match="--device cuda: this machine has no CUDA GPU"):
        train.cli(["--device", "cuda", "--epochs", "1"])


def test_custom_backend_on_a_gpu_without_the_cuda_kernels_says_how_to_rebuild(monkeypatch):
    """As on a GPU machine whose pyalexnet was built without nvcc: the device is a GPU, the build has
    no CUDA kernels. (Here no GPU is touched: the check comes before any work.)"""
    import pyalexnet
    from pyalexnet import distributed

    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.Dist(), torch.device("cuda", 0)))
    monkeypatch.setattr(pyalexnet, "build_info", lambda: {"cuda": False})
    with pytest.raises(SystemExit, match=r"built without its CUDA kernels.*PYALEXNET_CUDA=ON pip install"):
        train.cli(["--epochs", "1"])


@pytest.mark.parametrize("args, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
    (["--optimizer", "lion"], "argument --optimizer: invalid choice: 'lion'"),
])
def test_unknown_or_malformed_flags_get_argparse_usage(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.cli(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_older_checkpoint_without_the_newer_keys_resumes(tmp_path, capsys):
    """A checkpoint of an earlier layout (no epoch_state, rng, world_size, batch_size, config): its
    weights, optimiser state and progress are read into the run state, and the run goes on."""
    ck = tmp_path / "ck"
    train.main(RUN + ["--epochs", "1", "--checkpoint-dir", str(ck)])
    path = checkpoint.list_checkpoints(ck)[0]
    c = torch.load(path, weights_only=True)
    old = {k: v for k, v in c.items() if k not in ("epoch_state", "rng", "world_size", "batch_size", "config")}
    for p in ck.iterdir():
        p.unlink()
    checkpoint.save_checkpoint(old, ck / path.name)
    state = checkpoint.RunState.from_checkpoint(old)
    assert (state.epoch, state.step, state.epoch_state, state.world_size, state.batch_size) == (1, c["step"], None, 1, None)
    s = train.main(RUN + ["--epochs", "2", "--checkpoint-dir", str(ck), "--resume", "latest"])
    assert s["epochs"] == 2 and s["step"] == 2 * c["step"] and s["interrupted"] is None
    assert f"resumed from {ck / path.name}: 1 epoch(s) and 0 batch(es) done" in capsys.readouterr().out


def test_run_state_round_trips_through_a_checkpoint():
    es = checkpoint.EpochState(torch.randperm(5), torch.Generator().get_state(), torch.rand(3, dtype=torch.float64), 2.5)
    s = checkpoint.RunState(epoch=3, step=40, batch=7, epoch_state=es, best_acc=0.5, history=[{"epoch": 3}],
                            rng=[{"torch": torch.get_rng_state()}], world_size=2, batch_size=16, config={"lr": 0.1})
    c = s.to_checkpoint()
    assert isinstance(c["epoch_state"], dict) and set(c["epoch_state"]) == {"order", "gen", "sums", "seconds"}
    back = checkpoint.RunState.from_checkpoint(c)
    assert isinstance(back.epoch_state, checkpoint.EpochState)
    assert torch.equal(back.epoch_state.order, es.order) and back.epoch_state.seconds == 2.5
    assert (back.epoch, back.step, back.batch, back.best_acc, back.history, back.world_size, back.batch_size,
            back.config) == (3, 40, 7, 0.5, [{"epoch": 3}], 2, 16, {"lr": 0.1})
