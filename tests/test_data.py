"""Datasets of the trainer: the generated task, CIFAR-10 (restricted unpickler), Fashion-MNIST idx
files, ImageFolder trees, and the on-device batches, crops and flips."""
from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pyalexnet import data, synthetic
from pyalexnet.data import DataError
from pyalexnet.imagefolder import load_imagefolder

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_DIR = REPO_ROOT.parent / "shared" / "datasets" / "cifar10"
FMNIST_DIR = Path(data.FASHION_MNIST_DIR)


# ------------------------------------------------------------------------------------------------
# The generated task
# ------------------------------------------------------------------------------------------------
def test_synthetic_is_balanced_seeded_and_uint8():
    x, y = synthetic.generate(500, seed=3)
    assert x.shape == (500, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [50] * 10
    x2, y2 = synthetic.generate(500, seed=3)
    assert torch.equal(y, y2)
    differ = (x != x2).nonzero()
    assert differ.numel() == 0, (  # failed once in CI and never here: say where, to find the cause
        f"{len(differ)} of {x.numel()} values differ between two runs with the same seed; first (n, c, y, x): "
        f"{differ[:8].tolist()}, values {x[tuple(differ[:8].T)].tolist()} vs {x2[tuple(differ[:8].T)].tolist()}")
    assert not torch.equal(x, synthetic.generate(500, seed=4)[0])


def test_synthetic_is_not_separable_by_mean_colour():
    """A least-squares linear classifier on the mean colour (and its square) of each image does
    barely better than chance on held-out images."""
    x, y = synthetic.generate(4000, seed=5)
    m = x.double().mean((2, 3)) / 255
    feats = torch.cat([m, m ** 2, torch.ones(len(m), 1, dtype=torch.float64)], 1)
    onehot = torch.nn.functional.one_hot(y, 10).double()
    w = torch.linalg.lstsq(feats[:3000], onehot[:3000]).solution
    acc = (feats[3000:] @ w).argmax(1).eq(y[3000:]).double().mean().item()
    assert acc < 0.2, acc


def test_load_dataset_synthetic_has_a_separate_test_split():
    ds = data.load_dataset("synthetic", synthetic_size=200)
    assert len(ds.train_x) == 200 and len(ds.test_x) == 40 and len(ds.classes) == 10
    assert not any(torch.equal(ds.test_x[0], t) for t in ds.train_x)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------
def _write_cifar(root: Path, n: int = 20) -> dict:
    """A small CIFAR-10 python-format tree, pickled like the original (bytes keys)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
        batches[name] = d
    meta = {b"label_names": [c.encode() for c in "abcdefghij"], b"num_cases_per_batch": n}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def test_cifar10_format_holdout_and_test_batch(tmp_path):
    batches = _write_cifar(tmp_path)
    ds = data.load_cifar10(tmp_path, holdout=30)
    assert ds.train_x.shape == (70, 3, 32, 32) and ds.test_x.shape == (30, 3, 32, 32)
    assert ds.classes == tuple("abcdefghij")
    first = batches["data_batch_1"]
    assert torch.equal(ds.train_x[0], torch.from_numpy(first[b"data"][0]).view(3, 32, 32))
    assert ds.train_y[:20].tolist() == first[b"labels"]
    last = batches["data_batch_5"]
    assert ds.test_y.tolist()[-20:] == last[b"labels"]
    ds = data.load_cifar10(tmp_path, holdout=0)
    assert len(ds.train_x) == 100 and ds.test_y.tolist() == batches["test_batch"][b"labels"]
    assert ds.test_name == "test_batch"


def test_cifar10_tests_on_its_test_batch_by_default_where_it_is(tmp_path, monkeypatch):
    """No --holdout: CIFAR-10's own test split where the folder has it; without it, the last
    CIFAR10_HOLDOUT training images (the data the trainer's summary names either way)."""
    batches = _write_cifar(tmp_path)
    ds = data.load_dataset("cifar10", str(tmp_path))
    assert len(ds.train_x) == 100 and ds.test_name == "test_batch"
    assert ds.test_y.tolist() == batches["test_batch"][b"labels"]
    (tmp_path / "test_batch").unlink()
    monkeypatch.setattr(data, "CIFAR10_HOLDOUT", 30)
    ds = data.load_dataset("cifar10", str(tmp_path))
    assert (len(ds.train_x), len(ds.test_x)) == (70, 30) and ds.test_name == "validation: last 30 training images"


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 python-format pickle "
                                        r"\(refusing to load (posix|os)\.system"):
        data.load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar10_missing_and_malformed_files_are_named(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_2").unlink()
    with pytest.raises(DataError, match=r"data_batch_2: no such file \(expected a CIFAR-10"):
        data.load_cifar10(tmp_path)
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_4").write_bytes(
        pickle.dumps({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_4: expected 'data' as uint8 N x 3072"):
        data.load_cifar10(tmp_path)
    (tmp_path / "data_batch_4").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_4: not a CIFAR-10 python-format pickle"):
        data.load_cifar10(tmp_path)
    _write_cifar(tmp_path)
    with pytest.raises(DataError, match="holdout 100 leaves no CIFAR-10 training images"):
        data.load_cifar10(tmp_path, holdout=100)


@pytest.mark.skipif(not (CIFAR_DIR / "data_batch_1").exists(), reason=f"CIFAR-10 not in {CIFAR_DIR}")
def test_real_cifar10_training_batches():
    ds = data.load_dataset("cifar10", str(CIFAR_DIR))
    assert ds.train_x.shape == (45000, 3, 32, 32) and ds.test_x.shape == (5000, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert torch.bincount(ds.train_y, minlength=10).min() > 4000


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ------------------------------------------------------------------------------------------------
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_fmnist(root: Path, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    for prefix in ("train", "t10k"):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y)))
    return x, y


def test_fashion_mnist_idx_files_padded_to_32(tmp_path):
    x, y = _write_fmnist(tmp_path)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.train_x.shape == (12, 1, 32, 32) and ds.test_x.shape == (12, 1, 32, 32)
    assert torch.equal(ds.train_x[:, 0, 2:30, 2:30], torch.from_numpy(x))
    assert ds.train_x[:, :, :2].eq(0).all() and ds.train_y.tolist() == y.tolist()


def test_fashion_mnist_bad_files_are_named(tmp_path):
    _write_fmnist(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(_idx(np.zeros((3, 2), np.uint8))))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: expected an idx file of uint8 with 1"):
        data.load_fashion_mnist(tmp_path)
    bad.write_bytes(gzip.compress(_idx(np.zeros(12, np.uint8))[:-3]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: header says \(12,\) = 12 bytes, file has 9"):
        data.load_fashion_mnist(tmp_path)
    bad.write_bytes(b"plain")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a gzip file"):
        data.load_fashion_mnist(tmp_path)
    bad.unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: no such file"):
        data.load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FMNIST_DIR.exists(), reason="apt-get install dataset-fashion-mnist for this test")
def test_real_fashion_mnist():
    ds = data.load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 32, 32) and ds.test_x.shape == (10000, 1, 32, 32)
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


# ------------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------------
def _write_images(root: Path, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_holdout_and_train_val(tmp_path):
    _write_images(tmp_path / "flat", per_class=5)
    ds = data.load_dataset("imagefolder", str(tmp_path / "flat"), holdout=3, image_size=16)
    assert ds.classes == ("cat", "dog") and ds.train_x.shape == (7, 3, 16, 16) and len(ds.test_x) == 3
    _write_images(tmp_path / "tv" / "train")
    _write_images(tmp_path / "tv" / "val", per_class=2)
    ds = data.load_dataset("imagefolder", str(tmp_path / "tv"), image_size=24)
    assert ds.train_x.shape == (6, 3, 24, 24) and ds.test_x.shape == (4, 3, 24, 24)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_name == "val/"


def test_imagefolder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        data.load_dataset("imagefolder", str(tmp_path / "nowhere"))
    _write_images(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken.png: not a readable JPEG/PNG image"):
        data.load_dataset("imagefolder", str(tmp_path), image_size=8)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (signature, IHDR, a few bytes of IDAT, IEND) that claims width x height RGB
    pixels: a few dozen bytes that a decoder would expand to width * height * 3."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _truncated_jpeg() -> bytes:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:len(buf.getvalue()) // 2]


# name of the bad file in dog/ -> (its bytes, what the error says after "<name>: ")
BAD_IMAGES = {
    "truncated.jpg": (_truncated_jpeg, r"not a readable JPEG/PNG image \(OSError: image file is truncated"),
    "random.png": (lambda: np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                   r"not a readable JPEG/PNG image \(cannot identify image file"),
    # 64 megapixels: over the default max_pixels (50 M), under Pillow's own limit (89 M), so only our
    # check refuses it, from the header, before decoding (decoding would report truncated data)
    "bomb.png": (lambda: _png_claiming(8000, 8000),
                 r"8000x8000 = 64,000,000 pixels, more than max_pixels=50,000,000; refused before decoding"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_imagefolder_bad_image_is_an_error_naming_it(tmp_path, name):
    _write_images(tmp_path)
    make, reason = BAD_IMAGES[name]
    (tmp_path / "dog" / name).write_bytes(make())
    with pytest.raises(DataError, match=rf"dog/{name}: {reason}.*bad_images='skip'"):
        data.load_dataset("imagefolder", str(tmp_path), image_size=8)  # bad_images="error" by default
    with pytest.raises(DataError, match=rf"dog/{name}: {reason}"):
        load_imagefolder(tmp_path, 8, bad_images="error")


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_imagefolder_bad_image_is_skipped_with_a_warning(tmp_path, capsys, name):
    _write_images(tmp_path)
    make, reason = BAD_IMAGES[name]
    bad = tmp_path / "dog" / name
    bad.write_bytes(make())
    ds = data.load_dataset("imagefolder", str(tmp_path), holdout=2, image_size=8, bad_images="skip")
    assert ds.train_x.shape == (4, 3, 8, 8) and ds.test_x.shape == (2, 3, 8, 8)
    assert sorted(torch.cat([ds.train_y, ds.test_y]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == str(bad) and re.match(reason, ds.skipped[0][1])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and re.match(rf"warning: skipped bad image {re.escape(str(bad))}: {reason}", err[0])
    assert err[1] == f"warning: skipped 1 of 7 images under {tmp_path} (bad_images='skip')"


def test_imagefolder_pillows_own_bomb_limits_are_reported(tmp_path, capsys):
    """Past Pillow's limits, its DecompressionBombError, and its DecompressionBombWarning where
    warnings are errors, are raised in a worker thread: they come back as a bad image, not a crash."""
    Image = pytest.importorskip("PIL.Image")
    limit = Image.MAX_IMAGE_PIXELS
    _write_images(tmp_path)
    (tmp_path / "dog" / "huge.png").write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(DataError, match=r"huge.png: too many pixels for Pillow's decompression-bomb limit"):
        load_imagefolder(tmp_path, 8, max_pixels=10**11)
    (tmp_path / "dog" / "huge.png").write_bytes(_png_claiming(10_000, 10_000))  # over 89 M: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        ds = load_imagefolder(tmp_path, 8, holdout=1, bad_images="skip", max_pixels=10**9)
    assert len(ds.train_x) + len(ds.test_x) == 6
    assert ds.skipped[0][1].startswith("too many pixels for Pillow's decompression-bomb limit (Image size "
                                       "(100000000 pixels) exceeds limit")
    assert "warning: skipped 1 of 7 images" in capsys.readouterr().err
    assert Image.MAX_IMAGE_PIXELS == limit  # not mutated, not even for a while


def test_imagefolder_max_pixels_refuses_real_images(tmp_path, capsys):
    _write_images(tmp_path, per_class=2)  # 40 x 30 = 1200 pixels each
    with pytest.raises(DataError, match=r"cat/0.jpg: 40x30 = 1,200 pixels, more than max_pixels=1,000"):
        data.load_dataset("imagefolder", str(tmp_path), image_size=8, max_pixels=1000)
    with pytest.raises(DataError, match=rf"{tmp_path}: no readable images left: all 4 were bad and skipped"):
        data.load_dataset("imagefolder", str(tmp_path), image_size=8, bad_images="skip", max_pixels=1000)
    assert capsys.readouterr().err.count("more than max_pixels=1,000") == 4
    ds = data.load_dataset("imagefolder", str(tmp_path), holdout=1, image_size=8, max_pixels=1200)
    assert len(ds.train_x) == 3 and ds.skipped == ()


def test_imagefolder_skipping_must_leave_every_class_an_image(tmp_path):
    _write_images(tmp_path, per_class=2)
    for p in (tmp_path / "dog").iterdir():
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match=r"dog: class 'dog' has no readable images left: all 2 were bad and "
                                        r"skipped"):
        data.load_dataset("imagefolder", str(tmp_path), image_size=8, bad_images="skip")
    _write_images(tmp_path / "t2", per_class=2)
    (tmp_path / "t2" / "empty").mkdir()  # a class folder with no images (.ipynb_checkpoints...) used to pass
    with pytest.raises(DataError, match=r"empty: class 'empty' has no readable images \(no "
                                        r"\.jpg/\.jpeg/\.png files in it\)"):
        data.load_dataset("imagefolder", str(tmp_path / "t2"), image_size=8)


def test_imagefolder_skip_in_train_and_val(tmp_path, capsys):
    _write_images(tmp_path / "train")
    _write_images(tmp_path / "val", per_class=2)
    (tmp_path / "val" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "train" / "dog" / "bad.jpg").write_bytes(_truncated_jpeg())
    ds = data.load_dataset("imagefolder", str(tmp_path), image_size=8, bad_images="skip")
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_y.tolist() == [0, 0, 1, 1]
    assert [Path(p).relative_to(tmp_path).as_posix() for p, _ in ds.skipped] == ["train/dog/bad.jpg",
                                                                               "val/cat/bad.png"]
    assert f"warning: skipped 2 of 12 images under {tmp_path}" in capsys.readouterr().err


def test_imagefolder_bad_arguments(tmp_path):
    _write_images(tmp_path)
    with pytest.raises(ValueError, match=r"bad_images must be one of \('error', 'skip'\), got 'warn'"):
        load_imagefolder(tmp_path, bad_images="warn")
    with pytest.raises(ValueError, match=r"max_pixels must be an int >= 1, got 0"):
        load_imagefolder(tmp_path, max_pixels=0)
    with pytest.raises(ValueError, match=r"image_size must be an int >= 1, got 0"):
        data.load_dataset("imagefolder", str(tmp_path), image_size=0)
    with pytest.raises(ValueError, match=r"holdout must be an int >= 0 \(0: the dataset's own test split\), "
                                         r"got -3"):
        data.load_dataset("imagefolder", str(tmp_path), holdout=-3)  # used: x[:3] trained, the rest tested


# ------------------------------------------------------------------------------------------------
# Batches, crops, flips
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(32, 2), (13, 2), (7, 3), (2, 4), (100, 7)])
def test_shards_cover_a_global_batch_in_rank_order(n, world):
    slices = [data.shard(n, r, world) for r in range(world)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    sizes = [hi - lo for lo, hi in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_augment_gives_each_image_its_own_crop_and_flip():
    n, pad = 64, 2
    x = torch.randint(0, 256, (n, 3, 7, 9), dtype=torch.uint8)
    out = data.augment(x, pad, True, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    choices = set()
    for i in range(n):
        found = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (0, 1)
                 if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 7, dx:dx + 9]))]
        assert found, f"image {i} is no crop / flip of its input"
        choices.add(found[0])
    assert len(choices) > 10  # per-image choices, not one for the batch
    assert torch.equal(data.augment(x, 0, False), x)


def test_normalize_repeats_grey_to_three_channels():
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    out = data.normalize(x, torch.tensor([0.5]), torch.tensor([0.25]))
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32 and out.eq(2.0).all()
