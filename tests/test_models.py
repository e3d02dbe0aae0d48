"""AlexNet models: torchvision's layout and logits for the imagenet variant, the two backends agree
(forward and backward, float64 and float32, under bf16 autocast), set_backend, bad arguments."""
from __future__ import annotations

import pytest
import torch

from conftest import torchvision_or_skip
from pyalexnet import models
from pyalexnet.layers import INPUT_SIZE, LAYERS, ConvLayer
from pyalexnet.models import alexnet

# torchvision.models.alexnet's state_dict at 1000 classes: key -> shape.
TORCHVISION_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def test_imagenet_layout_is_torchvisions():
    m = alexnet()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == TORCHVISION_SHAPES
    assert sum(p.numel() for p in m.parameters()) == 61_100_840
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_cifar_variant_shapes():
    m = alexnet(10, "cifar")
    out = m(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert m.features(torch.randn(1, 3, 32, 32)).shape[2:] == (3, 3)  # 32 -> 15 -> 7 -> 3
    assert m.classifier[1].out_features == 4096
    assert [type(m.features[i]).__name__ for i in (1, 4, 7, 9, 11)] == ["BatchNorm2d"] * 5


def test_layer_table_is_what_the_models_build():
    """pyalexnet.layers.LAYERS, the one table of the conv layers (with the input size each sees), is what
the models build."""
    for variant, hw in INPUT_SIZE.items():
        net = alexnet(10, variant, backend="cudnn")
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].shape[-1]))) for m in net.conv_blocks()]
        with torch.no_grad():
            net.eval()(torch.randn(1, 3, hw, hw))
        for h in hooks:
            h.remove()
        built = [ConvLayer(f"conv{i + 1}", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                       m.pool_kernel_size[0], m.pool_stride[0], size) for i, (m, size) in enumerate(seen)]
        assert LAYERS[variant] == built, f"LAYERS[{variant!r}] differs from the model"


def test_torchvision_weights_give_the_same_logits():
    tv = torchvision_or_skip()
    ref = tv.models.alexnet(num_classes=7).eval()
    ours = alexnet(7).eval()
    ours.load_state_dict(ref.state_dict())       # and back: the keys are the same both ways
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x)
        for backend in models.BACKENDS:
            torch.testing.assert_close(ours.set_backend(backend)(x), expected, rtol=1e-4, atol=1e-5)


def _forward_backward(model, x):
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("variant,size,dtype", [("cifar", 32, torch.float64), ("cifar", 32, torch.float32),
                                                ("imagenet", 99, torch.float32)])
def test_backends_agree_forward_and_backward(variant, size, dtype):
    # eval: BatchNorm on running statistics (a batch's statistics divide by its tiny spread on
    # 3x3 maps and amplify float32 rounding differences)
    model = alexnet(10, variant, dropout=0.0).to(dtype).eval()
    x = torch.randn(4, 3, size, size, dtype=dtype)
    a = _forward_backward(model.set_backend("custom"), x)
    b = _forward_backward(model.set_backend("cudnn"), x)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(a[0], b[0], **tol)
    if dtype != torch.float64:
        # float32: two conv implementations differ by rounding, and where a pool window's top two
        # values (or a value and 0 at the ReLU) are that close, each may legitimately route the
        # gradient to another position (see test_conv_relu_maxpool.py): in a whole network a
        # few percent of the input gradient then differs. Gradients are compared in float64.
        return
    torch.testing.assert_close(a[1], b[1], **tol)
    for k in a[2]:
        scale = b[2][k].abs().max().item()
        torch.testing.assert_close(a[2][k], b[2][k], rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1),
                                   msg=lambda m, k=k: f"grad of {k}: {m}")


def test_set_backend_switches_in_place_without_touching_weights():
    m = alexnet(10, "cifar")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert m.backend == "custom"
    assert m.set_backend("cudnn") is m and m.backend == "cudnn"
    assert all(b.backend == "cudnn" for b in m.conv_blocks()) and len(m.conv_blocks()) == 5
    assert "backend='cudnn'" in repr(m)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="backend must be one of"):
        m.set_backend("cublas")
    assert m.backend == "cudnn"


def test_bf16_autocast_on_cpu():
    model = alexnet(10, "cifar", dropout=0.0).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = model.set_backend("cudnn")(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model.set_backend("custom")(x)
            theirs = model.set_backend("cudnn")(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    # bf16 has 8 bits of mantissa: both within a few percent of the float32 logits' scale
    scale = ref.abs().max().item()
    err_ours, err_theirs = (ours.float() - ref).abs().max().item(), (theirs.float() - ref).abs().max().item()
    assert err_ours <= 2 * err_theirs + 2 ** -7 * scale, (err_ours, err_theirs, scale)


def test_float64_model_takes_float32_input():
    m = alexnet(10, "cifar").double()
    assert m(torch.randn(2, 3, 32, 32)).dtype == torch.float64


def test_torch_compile_fullgraph():
    m = alexnet(10, "cifar", dropout=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="aot_eager")(x), m(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant must be one of"):
        alexnet(10, "mnist")
    with pytest.raises(ValueError, match="backend must be one of"):
        alexnet(10, "cifar", "triton")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        alexnet(0)


@pytest.mark.cuda
def test_missing_cuda_kernels_are_named(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setattr(models, "_CUDA_BUILT", False)
    m = alexnet(10, "cifar").cuda()
    with pytest.raises(RuntimeError, match="PYALEXNET_CUDA=ON pip install"):
        m(torch.randn(1, 3, 32, 32, device="cuda"))
    m.set_backend("cudnn")(torch.randn(1, 3, 32, 32, device="cuda"))


@pytest.mark.cuda
def test_backends_agree_on_the_gpu():
    if not torch.cuda.is_available() or not __import__("pyalexnet").build_info()["cuda"]:
        pytest.skip("needs a CUDA GPU and the CUDA kernels")
    # float64 and eval (BatchNorm on running statistics), as on the CPU: forward and every gradient
    model = alexnet(10, "cifar", dropout=0.0).cuda().double().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda", dtype=torch.float64)
    a = _forward_backward(model.set_backend("custom"), x)
    b = _forward_backward(model.set_backend("cudnn"), x)
    torch.testing.assert_close(a[0], b[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a[1], b[1], rtol=1e-9, atol=1e-9)
    for k in a[2]:
        scale = b[2][k].abs().max().item()
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-9, atol=1e-9 * max(scale, 1), msg=lambda m, k=k: f"{k}: {m}")
