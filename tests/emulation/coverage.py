"""Which emulated tests launch which CUDA kernel. Every __global__ kernel of csrc/cuda/*.cu is listed
with the tests that run it through the emulation driver: "file::test" (each of its parametrizations
launches it) or "file::test[params]" (that parametrization does).

Two checks hold the list to the truth: tests/test_emulation.py fails when a kernel has no entry or an
entry names a test that is not collected, and tests/conftest.py fails a listed test whose driver runs
did not launch the kernels it is listed for (read from the driver's launch logs)."""
from __future__ import annotations

_XENT = "test_emulation_softmax_cross_entropy.py"
_CRM = "test_emulation_conv_relu_maxpool.py"
_EXACT = f"{_CRM}::test_exact_inputs_match_the_cpu_kernels"
_BOTH = f"{_CRM}::test_both_versions_give_the_same_bits"
_ASKED = f"{_CRM}::test_only_the_asked_gradients"
_SPLITS = f"{_CRM}::test_many_splits_of_the_weight_gradient"
_BAD = f"{_XENT}::test_bad_target"

EMULATED_TESTS = {
    "softmax_cross_entropy_forward_kernel_impl": [f"{_XENT}::test_matches_reference", f"{_XENT}::test_options",
                                                  f"{_BAD}[warp_per_row-forward]", f"{_BAD}[block_per_row-forward]"],
    "softmax_cross_entropy_finalize_kernel_impl": [f"{_XENT}::test_matches_reference", f"{_XENT}::test_empty_batch"],
    "softmax_cross_entropy_backward_kernel_impl": [f"{_XENT}::test_matches_reference", f"{_XENT}::test_options",
                                                   f"{_BAD}[warp_per_row-backward]",
                                                   f"{_BAD}[block_per_row-backward]"],
    "conv_relu_maxpool_forward_kernel_impl": [_EXACT, f"{_CRM}::test_gaussian_inputs_match_the_reference", _BOTH],
    "conv_relu_maxpool_dgrad_kernel_impl": [_EXACT, f"{_ASKED}[100]", _BOTH],
    "conv_relu_maxpool_wgrad_kernel_impl": [_EXACT, _SPLITS, _BOTH],
    "conv_relu_maxpool_bias_grad_kernel_impl": [_EXACT, f"{_ASKED}[001]", f"{_ASKED}[011]"],
    # the un-pooling kernels: byte masks (unpool) or bit masks with 16-byte rows (unpool_vec)
    "conv_relu_maxpool_unpool_kernel_impl": [f"{_EXACT}[k_tail-f32]", f"{_EXACT}[rect_everything-f64]",
                                             f"{_EXACT}[window_in_passes-bf16]", f"{_EXACT}[mask_bytes-f16]",
                                             f"{_BOTH}[k_tail-tf32]", f"{_BOTH}[conv3_like_groups-bf16]"],
    "conv_relu_maxpool_unpool_vec_kernel_impl": [f"{_EXACT}[mask_bits_vec-f32]",
                                                 f"{_EXACT}[co_multiple_of_k_step-bf16]",
                                                 f"{_EXACT}[conv3_like_groups-f64]", f"{_BOTH}[conv2_like-tf32]",
                                                 f"{_BOTH}[co_multiple_of_k_step-f16]"],
    "conv_relu_maxpool_reduce_kernel_impl": [_EXACT, _SPLITS],
    # the pooling after flat conv tiles (kFlatConv: flat_conv on the tensor cores)
    "conv_relu_maxpool_pool_kernel_impl": [f"{_EXACT}[flat_conv-tf32]", f"{_EXACT}[flat_conv-bf16]",
                                           f"{_BOTH}[flat_conv-f16]"],
    # TF32: the packed weights rounded before the forward and the data gradient
    "conv_relu_maxpool_round_tf32_kernel_impl": [f"{_EXACT}[conv2_like-tf32]", f"{_EXACT}[quads_across_taps-tf32]",
                                                 f"{_BOTH}[conv2_like-tf32]"],
}


def expected_launches(nodeid: str) -> set[str]:
    """The kernels the test with this pytest node id must launch (empty for tests not listed)."""
    test = nodeid.rsplit("/", 1)[-1]  # file::name[params]
    function = test.split("[", 1)[0]
    return {kernel for kernel, tests in EMULATED_TESTS.items() if test in tests or function in tests}
