"""Bad input at the user-facing entries outside the trainer: each is refused with a message that says
what was wrong and what is accepted, never accepted silently nor crashed on inside.

Checks that live elsewhere are not repeated here: the ops' own bad tensors in
test_conv_relu_maxpool.py and test_softmax_cross_entropy.py (rank, channels, empty output, dtypes,
devices, strides, targets out of range, label_smoothing), alexnet()'s num_classes 0, variant, backend
and set_backend in test_models.py, and the dataset files' first checks in test_data.py.
"""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import pyalexnet
from pyalexnet import data, models, ops
from pyalexnet.data import DataError
from pyalexnet.models import alexnet
from test_data import _idx, _write_cifar, _write_fmnist  # tests/ is on sys.path (see conftest.py)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", (2.5, "10", True, None), ids=repr)
def test_alexnet_num_classes_must_be_an_int(num_classes):
    with pytest.raises(ValueError, match=rf"num_classes must be an int, got {num_classes!r}"):
        alexnet(num_classes, "cifar")


@pytest.fixture(scope="module")
def cifar_model():
    return alexnet(10, "cifar").eval()


@pytest.mark.parametrize("backend", models.BACKENDS)
def test_model_input_is_checked_in_the_models_terms(cifar_model, backend):
    """Both backends refuse the same inputs with the same words (the custom op used to cast uint8
    images to float silently, F.conv2d to refuse them in its own terms)."""
    m = cifar_model.set_backend(backend)
    with pytest.raises(ValueError, match=r"AlexNet input must be floating point, got torch.uint8 \(uint8 "
                                         r"images need pyalexnet.data.normalize first\)"):
        m(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"AlexNet input must be \(N, 3, H, W\) images, got shape "
                                         r"\(2, 1, 32, 32\)"):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \(3, 32, 32\)"):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"AlexNet-cifar input must be at least 15x15 pixels, got 14x32"):
        m(torch.randn(1, 3, 14, 32))
    assert m(torch.randn(1, 3, 15, 15)).shape == (1, 10)  # the smallest that works


def test_imagenet_variant_smallest_input():
    assert models.MIN_INPUT_SIZE == {"imagenet": 63, "cifar": 15}
    m = alexnet(10, "imagenet").eval()
    with pytest.raises(ValueError, match=r"AlexNet-imagenet input must be at least 63x63 pixels, got 32x32"):
        m(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        assert m(torch.randn(1, 3, 63, 63)).shape == (1, 10)


# ------------------------------------------------------------------------------------------------
# conv_relu_maxpool and nn.ConvReLUMaxPool2d
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", (1.5, (2, 1.5), "1", True), ids=repr)
def test_op_stride_must_be_ints(stride):
    """A float stride used to be truncated silently ((2, 1.5) ran as (2, 1)) or fail inside _pair."""
    x, w = torch.randn(1, 3, 9, 9), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, got "):
        ops.conv_relu_maxpool(x, w, stride=stride)


BAD_MODULE_ARGS = (
    (dict(stride=0), r"stride must be >= 1, got \[0, 0\]"),
    (dict(stride=(1, -2)), r"stride must be >= 1, got \[1, -2\]"),
    (dict(padding=-1), r"padding must be >= 0, got \[-1, -1\]"),
    (dict(padding="same"), r"padding must be an int or a pair of ints, got 'same'"),
    (dict(kernel_size=0), r"kernel_size must be >= 1, got \[0, 0\]"),
    (dict(pool_kernel_size=0), r"pool_kernel_size must be >= 1, got \[0, 0\]"),
    (dict(pool_stride=(2, 0)), r"pool_stride must be >= 1, got \[2, 0\]"),
    (dict(pool_kernel_size=16), r"pool windows may have at most 255 positions, got "
                                r"pool_kernel_size=\[16, 16\]"),
    (dict(pool_kernel_size=1.5), r"pool_kernel_size must be an int or a pair of ints, got 1.5"),
    (dict(in_channels=0), r"in_channels must be an int >= 1, got 0"),
    (dict(out_channels=2.5), r"out_channels must be an int >= 1, got 2.5"),
)


@pytest.mark.parametrize("kwargs, message", BAD_MODULE_ARGS,
                         ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in BAD_MODULE_ARGS])
def test_module_refuses_bad_arguments_when_built(kwargs, message):
    """These used to build a module whose first forward failed (or, for in_channels=0, ran)."""
    args = dict(in_channels=3, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=message):
        pyalexnet.nn.ConvReLUMaxPool2d(**args)


@pytest.mark.parametrize("x, message", (
    (torch.randn(3, 9, 9), r"input must be 4-D \(N, C, H, W\), got shape \[3, 9, 9\]"),
    (torch.randn(2, 5, 9, 9), r"input has 5 channels but weight expects 3"),
    (torch.randn(2, 3, 2, 9), r"input \[2, 3, 2, 9\] padded by \[0, 0\] is smaller than the kernel 3x3"),
    (torch.randn(2, 3, 9, 9).long(), r"input must be float32, float16, bfloat16 or float64, got Long"),
    (torch.randn(2, 3, 9, 9).double(), r"weight dtype Float differs from input dtype Double"),
    (torch.randn(2, 3, 9, 9, device="meta"), r"weight is on cpu but input is on meta"),
), ids=("rank", "channels", "kernel-larger", "integer", "dtype", "device"))
def test_module_forward_bad_input(x, message):
    m = pyalexnet.nn.ConvReLUMaxPool2d(3, 4, 3)
    with pytest.raises(RuntimeError, match="conv_relu_maxpool: " + message):
        m(x)


# ------------------------------------------------------------------------------------------------
# Softmax cross-entropy: the op's arguments and the nn module's forward
# ------------------------------------------------------------------------------------------------
def test_loss_op_arguments():
    x, t = torch.randn(4, 5), torch.tensor([0, 1, 2, 4])
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got '0.1'"):
        ops.softmax_cross_entropy(x, t, label_smoothing="0.1")
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got None"):
        ops.softmax_cross_entropy(x, t, label_smoothing=None)
    # a float ignore_index used to be truncated silently (1.5 ignored class 1)
    with pytest.raises(ValueError, match=r"ignore_index must be an int \(the target value to ignore, "
                                         r"e.g. -100\), got 1.5"):
        ops.softmax_cross_entropy(x, t, ignore_index=1.5)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        ops.softmax_cross_entropy(x.tolist(), t)
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        ops.softmax_cross_entropy(x, t.tolist())
    assert ops.softmax_cross_entropy(x, t, label_smoothing=torch.tensor(0.1)).isfinite()  # still fine


def test_loss_module_bad_options():
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got -0.5"):
        pyalexnet.nn.SoftmaxCrossEntropyLoss(label_smoothing=-0.5)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 'high'"):
        pyalexnet.nn.SoftmaxCrossEntropyLoss(label_smoothing="high")
    with pytest.raises(ValueError, match=r"ignore_index must be an int .*, got 0.5"):
        pyalexnet.nn.SoftmaxCrossEntropyLoss(ignore_index=0.5)


@pytest.mark.parametrize("target, exc, message", (
    (torch.tensor([0, 1, 2, 5]), RuntimeError,
     r"target 5 at position 3 is out of range for 5 classes \(valid: 0..4, or ignore_index = -100\)"),
    (torch.tensor([0, 1, -1, 4]), RuntimeError, r"target -1 at position 2 is out of range for 5 classes"),
    (torch.tensor([0, 1, 2, 4], dtype=torch.uint8), RuntimeError,
     r"target must hold class indices as int64 or int32, got Byte"),
    (torch.rand(4, 5), RuntimeError, r"target must hold class indices as int64 or int32, got Float"),
    (torch.tensor([0, 1, 2]), RuntimeError, r"target must have shape \(N,\) = \(4,\) to match logits "
                                            r"\[4, 5\], got \[3\]"),
), ids=("above", "negative", "uint8", "probabilities", "shape"))
def test_loss_module_forward_bad_labels(target, exc, message):
    with pytest.raises(exc, match="softmax_cross_entropy: " + message):
        pyalexnet.nn.SoftmaxCrossEntropyLoss(label_smoothing=0.1)(torch.randn(4, 5), target)


# ------------------------------------------------------------------------------------------------
# load_dataset and the dataset files
# ------------------------------------------------------------------------------------------------
def test_load_dataset_arguments(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; expected one of \('synthetic', 'cifar10', "
                                        r"'fashion-mnist', 'imagefolder'\)"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match=r"holdout must be an int >= 0 \(0: the dataset's own test split\), "
                                         r"got -5"):
        data.load_dataset("cifar10", str(tmp_path), holdout=-5)  # used to test on test_batch silently
    with pytest.raises(ValueError, match=r"synthetic_size must be an int >= 1, got 0"):
        data.load_dataset("synthetic", synthetic_size=0)  # used to give an empty training set
    with pytest.raises(ValueError, match=r"bad_images must be one of \('error', 'skip'\), got 'ignore'"):
        data.load_dataset("synthetic", bad_images="ignore")


def test_cifar10_folder_missing_or_not_a_folder(tmp_path):
    layout = r"CIFAR-10's python version: data_batch_1 .. data_batch_5, test_batch, batches.meta"
    with pytest.raises(DataError, match=rf"nowhere: no such folder \(expected the folder of {layout}\)"):
        data.load_dataset("cifar10", str(tmp_path / "nowhere"))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: not a folder \(expected"):
        data.load_dataset("cifar10", str(tmp_path / "cifar-10-python.tar.gz"))  # used: NotADirectoryError
    _write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match=r"no data_batch_1 here, but in .*cifar-10-batches-py: use that "
                                        r"folder"):
        data.load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize("garbage, message", (
    # a length field claiming 1 TiB: the unpickler allocates it first (MemoryError, unless the
    # kernel overcommits, then truncated data) ...
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40), r"(MemoryError|pickle data was truncated)"),
    # ... or past sys.maxsize (OverflowError): both used to escape as internal errors
    (b"\x80\x04\x8e" + struct.pack("<Q", (1 << 63) + 1), r"OverflowError: BINBYTES"),
    (np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(), r""),
    (b"", r"EOFError"),
), ids=("huge-length", "overflow-length", "random-bytes", "empty"))
def test_cifar10_garbage_data_batch_1(tmp_path, garbage, message):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(garbage)
    with pytest.raises(DataError, match=rf"data_batch_1: not a CIFAR-10 python-format pickle \(.*{message}"):
        data.load_dataset("cifar10", str(tmp_path))


def test_cifar10_data_batch_1_wrong_contents(tmp_path):
    _write_cifar(tmp_path)
    bad = tmp_path / "data_batch_1"
    images = np.zeros((5, 3072), np.uint8)
    cases = (
        (7, r"got int 7"),                                                  # used: TypeError
        (["a"] * 5, r"got a list of 5 starting with 'a'"),                  # used: ValueError
        ([1.5] * 5, r"got a list of 5 starting with 1.5"),                  # used: accepted as 1
        ([[1]] * 5, r"got a list of 5 starting with \[1\]"),                # used: RuntimeError in cat
    )
    for labels, message in cases:
        bad.write_bytes(pickle.dumps({b"data": images, b"labels": labels}, protocol=2))
        with pytest.raises(DataError, match=r"data_batch_1: expected 'labels' as a list of 5 ints in 0..9, "
                                            + message):
            data.load_cifar10(tmp_path)
    bad.unlink()
    bad.mkdir()
    with pytest.raises(DataError, match=r"data_batch_1: is a folder \(expected a CIFAR-10 python-format"):
        data.load_cifar10(tmp_path)  # used: IsADirectoryError
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "batches.meta").write_bytes(pickle.dumps({b"label_names": 5}))
    with pytest.raises(DataError, match=r"batches.meta: expected 10 'label_names', got int 5"):
        data.load_cifar10(tmp_path / "c")  # used: TypeError


def test_fashion_mnist_folder_missing(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such folder \(expected the four idx .gz files of "
                                        r"Fashion-MNIST"):
        data.load_dataset("fashion-mnist", str(tmp_path / "nowhere"))


def test_fashion_mnist_wrong_idx_files(tmp_path, monkeypatch):
    _write_fmnist(tmp_path)
    images, labels = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    images.write_bytes(gzip.compress(_idx(np.zeros((12, 32, 32), np.uint8))))  # used: padded to 36x36
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: expected 28x28 images "
                                        r"\(Fashion-MNIST\), got 32x32"):
        data.load_dataset("fashion-mnist", str(tmp_path))
    # sizes whose product wraps to 0 in int64 used to pass the size check, then fail in torch
    images.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1 << 31, 1 << 31, 1 << 31)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: header says \(2147483648, 2147483648, "
                                        r"2147483648\) = 9903520314283042199192993792 bytes, file has 0"):
        data.load_dataset("fashion-mnist", str(tmp_path))
    _write_fmnist(tmp_path)
    labels.write_bytes(gzip.compress(_idx(np.full(12, 200, np.uint8))))  # used: accepted
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: labels must lie in 0..9, got 200..200"):
        data.load_dataset("fashion-mnist", str(tmp_path))
    labels.write_bytes(gzip.compress(_idx(np.zeros(12, np.uint8)))[:-12])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: a truncated gzip file"):
        data.load_dataset("fashion-mnist", str(tmp_path))
    _write_fmnist(tmp_path)
    monkeypatch.setattr(data, "IDX_MAX_BYTES", 1000)  # a gzip bomb, scaled down
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: inflates to more than 1,000 bytes, "
                                        r"larger than any Fashion-MNIST file"):
        data.load_dataset("fashion-mnist", str(tmp_path))
