// Fused conv2d + ReLU + max-pool, CUDA: the backward's entry, its workspace and the order of its
// passes (each in its own file: conv_relu_maxpool_passes.h).
//
// Backward, from the pooled gradient and the codes alone (nothing full-resolution is saved for it).
// The un-pooled gradient (unpooled_gradient: each conv output gathers the pooled gradients whose
// saved maximum sits on it) is computed once into the workspace as dconv (N Hc Wc x Cd, unpool
// kernel) and freed after the backward; the GEMMs read it by 16-byte copies:
//   dgrad: dx (N H W x Ci) = unpooled (N H W x kh kw Co, gathered) . W (kh kw Co x Ci); one block per
//          128 input pixels x BN input channels, the whole reduction in the block, dx written once;
//   wgrad: dw (Co x kh kw Ci) = unpooled^T . patches, split over conv positions into partial sums
//          (workspace), summed by a reduce kernel in a fixed order: deterministic, no atomics;
//   bias:  db = the sum of the pooled gradients that passed (same split + reduce).
#include "cuda/conv_relu_maxpool_passes.h"

namespace pyalexnet {
namespace crm {

namespace {

template <class C>
Splits backward_splits(const BackwardArgs& a) {
  const Shape& g = a.g;
  const int64_t target = 2 * int64_t(a.sm_count > 0 ? a.sm_count : 1);
  Splits s{};
  const int64_t K = g.kh * g.kw * wgrad_channels<C>(a), P = g.N * g.Hc * g.Wc, steps = ceil_div(P, C::BK);
  const int64_t tiles = ceil_div(K, C::BN) * ceil_div(g.Co, kBM);
  const int64_t cap = (int64_t(256) << 20) / (g.Co * K * int64_t(sizeof(typename C::acc)));  // <= 256 MiB
  int64_t n = ceil_div(target, tiles);
  n = n < steps ? n : steps;
  n = n < cap ? n : cap;
  n = n > 1 ? n : 1;
  const int64_t fit = ceil_div(steps, (int64_t(1) << 30) / C::BK);  // < 2^30 positions a split (32-bit counts)
  n = n > fit ? n : fit;
  s.w_chunk = ceil_div(steps, n) * C::BK;
  s.w_splits = ceil_div(P, s.w_chunk);
  const int64_t R = g.N * g.Hp * g.Wp, ct = ceil_div(g.Co, 64);
  int64_t nb = ceil_div(target, ct);
  nb = nb < ceil_div(R, 64) ? nb : ceil_div(R, 64);
  nb = nb > 1 ? nb : 1;
  s.b_rows = ceil_div(R, nb);
  s.b_splits = ceil_div(R, s.b_rows);
  return s;
}

// Workspace: the weight gradient's partial sums, the bias gradient's, then (when dx or dw is asked)
// the un-pooled gradient dconv; each part starts 16-byte aligned.
struct Workspace {
  int64_t w, b, dconv, total;  // byte offsets of the parts, and the size
};

template <class C>
Workspace workspace_of(const BackwardArgs& a, const Splits& s) {
  const Shape& g = a.g;
  const int64_t K = g.kh * g.kw * wgrad_channels<C>(a), acc = sizeof(typename C::acc);
  const int64_t w = a.dw ? s.w_splits * g.Co * K * acc : 0, b = a.db ? s.b_splits * g.Co * acc : 0;
  const int64_t d = a.dx || a.dw ? g.N * g.Hc * g.Wc * dconv_channels<C>(g.Co) * int64_t(sizeof(typename C::Tc)) : 0;
  Workspace ws{0, ceil_div(w, 16) * 16, 0, 0};
  ws.dconv = ws.b + ceil_div(b, 16) * 16;
  ws.total = ws.dconv + d;
  return ws;
}

template <class C>
cudaError_t backward(const BackwardArgs& a, cudaStream_t stream) {
  const Splits s = backward_splits<C>(a);
  const Workspace wl = workspace_of<C>(a, s);
  auto* ws = static_cast<unsigned char*>(a.workspace);
  void* dconv = a.dx || a.dw ? ws + wl.dconv : nullptr;
  if (dconv) launch_unpool(a, dconv, stream);
  if (a.db) launch_bias_grad(a, s, ws + wl.b, stream);
  if (a.dw) launch_wgrad(a, s, ws + wl.w, dconv, stream);
  if (a.dx) launch_dgrad(a, dconv, stream);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv_relu_maxpool_backward(const BackwardArgs& a, cudaStream_t stream) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto*) { return backward<decltype(c)>(a, stream); });
}

int64_t conv_relu_maxpool_backward_workspace_bytes(const BackwardArgs& a) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto*) {
    using C = decltype(c);
    return workspace_of<C>(a, backward_splits<C>(a)).total;
  });
}

}  // namespace crm
}  // namespace pyalexnet
