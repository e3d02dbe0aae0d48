"""Image trees streamed from disk (pyalexnet.stream, the trainer's --stream): the RandomResizedCrop
boxes, decoding of the files people have (grayscale, CMYK, PNG, EXIF-rotated, truncated), batches
that a resume reproduces, bad files and dying workers as one error naming the file, a whole epoch of
the ImageNet variant, and memory that does not grow with the number of images."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyalexnet import stream, train
from pyalexnet.imagefolder import decode_file
from pyalexnet.images import DataError

Image = pytest.importorskip("PIL.Image")


def make_tree(root: Path, per_class: int = 6, val: int = 2, size=(60, 400), broken: bool = True,
              smooth: bool = False) -> Path:
    """root/train and root/val of three classes: JPEGs of varied sizes, every fourth grayscale, CMYK,
    or EXIF-rotated (orientation 6), a PNG or two; one truncated JPEG in train/cat."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c in ("cat", "dog", "eel"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(*size, 2))
                if smooth:  # small files: gradients, not noise
                    a = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()
                else:
                    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                im = Image.fromarray(a)
                kind = i % 4
                if kind == 3:
                    exif = Image.Exif()
                    exif[0x0112] = 6
                    im.save(d / f"{i}.jpg", exif=exif)
                else:
                    im = {0: im, 1: im.convert("L"), 2: im.convert("CMYK")}[kind]
                    im.save(d / (f"{i}.png" if kind == 1 and i % 8 == 1 else f"{i}.jpg"))
    if broken:
        (root / "train" / "cat" / "broken.jpg").write_bytes((root / "train" / "cat" / "0.jpg").read_bytes()[:300])
    return root


def test_random_resized_box_follows_torchvisions_rule():
    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(20, 600), rng.randint(20, 600)
        left, top, cw, ch = stream.random_resized_box(w, h, rng)
        assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0
    # the tries: area share in [0.08, 1], aspect ratio in [3/4, 4/3] (up to rounding)
    shares, ratios = [], []
    for _ in range(500):
        _, _, cw, ch = stream.random_resized_box(400, 400, rng)
        shares.append(cw * ch / 160000)
        ratios.append(cw / ch)
    assert 0.07 < min(shares) and max(shares) <= 1 and min(ratios) > 0.73 and max(ratios) < 1.37
    assert np.mean(shares) == pytest.approx(0.54, abs=0.06)  # uniform in [0.08, 1]: 0.54
    # a sliver no try fits: the centre crop at the ratio's bound
    assert stream.random_resized_box(1000, 10, random.Random(1)) == ((1000 - 13) // 2, 0, 13, 10)
    # the same seed, the same box
    assert stream.random_resized_box(300, 200, random.Random(7)) == stream.random_resized_box(300, 200, random.Random(7))


def test_decoding_the_files_people_have(tmp_path):
    """Grayscale, CMYK and palette files become RGB; EXIF orientation 6 turns a 40 x 20 JPEG upright
    (20 x 40); a truncated file is a reason, not an exception."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(a).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(a).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(a).convert("P").save(tmp_path / "palette.png")
    rotated = decode_file(tmp_path / "rotated.jpg", 10**6, np.array)
    assert rotated.shape == (40, 20, 3)
    assert rotated[:15].mean() > 200 and rotated[25:].mean() < 50  # the white half now on top
    for name in ("cmyk.jpg", "gray.png", "palette.png"):
        assert decode_file(tmp_path / name, 10**6, np.array).shape == (20, 40, 3), name
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rotated.jpg").read_bytes()[:200])
    assert "not a readable JPEG/PNG image" in decode_file(tmp_path / "cut.jpg", 10**6, np.array)
    assert "more than max_pixels=100" in decode_file(tmp_path / "gray.png", 100, np.array)


def _all(batches) -> list:
    return [(x.clone(), y.clone()) for x, y, _ in batches]


def test_batches_are_the_same_from_any_start_and_any_worker_count(tmp_path):
    """The epoch's batches from batch 2 on equal the tail of the whole epoch, with 2 workers and with
    none: each crop and flip is drawn from (seed, epoch, image), so a resumed run sees what an
    uninterrupted one saw. Test batches: resize + centre crop, every file once, in order."""
    root = make_tree(tmp_path / "t", per_class=8, broken=False)
    trees = [stream.StreamTree(root, 32, workers=w) for w in (2, 0)]
    order = torch.randperm(len(trees[0].train), generator=torch.Generator().manual_seed(3)).tolist()
    whole = _all(trees[0].train_batches(order, 5, 0, seed=1, epoch=2))
    assert [len(y) for _, y in whole] == [5, 5, 5, 5, 4] and whole[0][0].shape == (5, 32, 32, 3)
    assert torch.equal(torch.cat([y for _, y in whole]), trees[0].train.labels[order])
    for tree in trees:
        tail = _all(tree.train_batches(order, 5, 2, seed=1, epoch=2))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, whole[2:]))
    other_epoch = _all(trees[0].train_batches(order, 5, 0, seed=1, epoch=3))
    assert not torch.equal(other_epoch[0][0], whole[0][0])  # another epoch, other crops
    test = _all(trees[0].test_batches(4))
    assert torch.equal(torch.cat([y for _, y in test]), trees[0].test.labels) and test[0][0].shape == (4, 32, 32, 3)


def test_bad_files_stop_the_run_or_are_skipped(tmp_path, capsys):
    root = make_tree(tmp_path / "t", per_class=4)
    tree = stream.StreamTree(root, 32, workers=2)
    order = list(range(len(tree.train)))
    with pytest.raises(DataError, match=r"train/cat/broken.jpg: not a readable JPEG/PNG image .*--bad-images skip"):
        _all(tree.train_batches(order, 4, 0, seed=0, epoch=1))
    tree = stream.StreamTree(root, 32, bad_images="skip", workers=2)
    got = _all(tree.train_batches(order, 4, 0, seed=0, epoch=1))
    assert sum(len(y) for _, y in got) == len(order) - 1
    assert [Path(p).name for p, _ in tree.skipped] == ["broken.jpg"]
    assert "warning: skipped bad image" in capsys.readouterr().err


def dying_decode(path, max_pixels, transform):
    """decode_file, except that the worker reading train/dog/2.jpg dies at once (as an out-of-memory
    kill or a crash in a decoder would end it)."""
    if str(path).endswith(os.path.join("dog", "2.jpg")):
        os._exit(3)
    return decode_file(path, max_pixels, transform)


def test_a_dying_worker_is_one_error_naming_its_file(tmp_path):
    root = make_tree(tmp_path / "t", per_class=4, broken=False)
    tree = stream.StreamTree(root, 32, workers=2, decode=dying_decode)
    with pytest.raises(DataError, match=r"an image-decoding worker failed \(DataLoader worker .*\) while reading "
                                        r".*train/dog/2.jpg"):
        _all(tree.train_batches(list(range(len(tree.train))), 4, 0, seed=0, epoch=1))


def test_an_epoch_of_the_imagenet_variant_streamed_end_to_end(tmp_path, capsys):
    """--stream on a tree of JPEGs of varied sizes, grayscale, CMYK and EXIF-rotated ones and a
    truncated one (--bad-images skip): one epoch of --variant imagenet at 224 pixels on the CPU."""
    root = make_tree(tmp_path / "t", per_class=5)
    s = train.main(["--dataset", "imagefolder", "--data-dir", str(root), "--stream", "--variant", "imagenet",
                    "--epochs", "1", "--batch-size", "8", "--bad-images", "skip", "--workers", "2", "--recipe",
                    "imagenet", "--no-progress"])
    out, err = capsys.readouterr()
    assert s["epochs"] == 1 and s["test_split"] == "val/" and s["confusion_matrix"].sum() == 6
    assert "streamed from disk by 2 worker process(es)" in out and "input pipeline alone" in out
    assert "skipped bad image" in err and "broken.jpg" in err


def _peak_rss(args: list[str]) -> int:
    """Peak resident memory (bytes) of the trainer run in a fresh process, its workers included."""
    code = ("import resource, sys; from pyalexnet import train; train.main(sys.argv[1:]); "
            "print(max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stdout.split()[-1]) * 1024


@pytest.mark.thorough
def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """The same run on 4x the images (480 x 360 JPEGs, 96-pixel crops) peaks within 10% of the
    memory of the 1x run: the files are streamed, not held."""
    peaks = []
    for n in (40, 160):
        root = make_tree(tmp_path / str(n), per_class=n, val=4, size=(360, 480), broken=False, smooth=True)
        peaks.append(_peak_rss(["--dataset", "imagefolder", "--data-dir", str(root), "--stream", "--variant", "cifar",
                                "--image-size", "96", "--epochs", "1", "--batch-size", "40", "--workers", "2",
                                "--threads", "1", "--no-progress"]))
    assert peaks[1] <= 1.1 * peaks[0], f"peak RSS {peaks[0] / 2**20:.0f} MiB -> {peaks[1] / 2**20:.0f} MiB"


def test_a_tree_too_large_for_memory_is_streamed(tmp_path, monkeypatch, capsys):
    """Without --stream/--no-stream: streamed when the decoded images would fill more than a quarter
    of the available memory, decoded into memory otherwise."""
    from pyalexnet import batches, config, distributed
    root = make_tree(tmp_path / "t", per_class=2, broken=False)
    cfg = config.Config(dataset="imagefolder", data_dir=str(root), image_size=32, workers=0)
    d = distributed.Dist()
    assert isinstance(batches.build_data(cfg, d, torch.device("cpu")), batches.InMemory)
    monkeypatch.setattr(batches, "available_bytes", lambda: 4 * 12 * 32 * 32 * 3 - 1)  # 12 files
    assert isinstance(batches.build_data(cfg, d, torch.device("cpu")), batches.Streamed)
    cfg.stream = False
    assert isinstance(batches.build_data(cfg, d, torch.device("cpu")), batches.InMemory)


def slow_decode(path, max_pixels, transform):
    """0.8 s an image: the pipeline limits the run even when the two steps (1.1 s each alone, the
    first calls generating their micro-kernels) run twice as slowly beside other tests. At 0.3 s
    the loop waited 58% of the epoch alone, 29% in CI beside another test."""
    import time
    time.sleep(0.8)
    return decode_file(path, max_pixels, transform)


def test_a_slow_pipeline_is_reported_as_the_bottleneck(tmp_path, monkeypatch, capsys):
    from pyalexnet import batches
    root = make_tree(tmp_path / "t", per_class=4, broken=False)
    monkeypatch.setattr(batches, "StreamTree", lambda *a, **k: stream.StreamTree(*a, **k, decode=slow_decode))
    s = train.main(["--dataset", "imagefolder", "--data-dir", str(root), "--stream", "--variant", "cifar",
                    "--image-size", "32", "--epochs", "1", "--batch-size", "6", "--workers", "1", "--no-progress",
                    "--log", str(tmp_path / "m.jsonl")])
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert s["epochs"] == 1 and row["data_wait"] > 0.5 and row["pipeline_images_per_s"] < 4
    assert "warning: the input pipeline, not the model, limits this run" in capsys.readouterr().err
