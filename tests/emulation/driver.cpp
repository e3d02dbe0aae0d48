// Test driver of the CUDA kernels in the CPU emulation of CUDA (csrc/cuda/emulation.h): no torch, no
// Python. tests/emulation/harness.py compiles it with the kernel files (AddressSanitizer and UBSan
// on), writes the inputs as raw arrays into a directory, runs it, and reads the raw outputs back.
//
//   driver xent DIR key=value...      softmax cross-entropy: forward (+ finalize) then backward
//   driver crm DIR key=value...       conv + ReLU + max-pool: forward, then backward from its codes
//   driver selftest NAME DIR schedule=asc|desc    a self-test of the emulation (selftest_kernels.cu)
//
// xent keys: dtype=f32|f16|bf16|f64 tgt=i32|i64 N C row_stride offset (elements the logits and the
// gradient start past a 64-byte boundary) target_stride weighted=0|1 ignore_index reduction=0|1|2
// smoothing phase=both|backward schedule=asc|desc. Inputs in DIR: logits.bin ((N-1) row_stride + C
// elements), target.bin, weight.bin (acc), grad.bin (acc: N for reduction none, else 1), and for
// phase=backward lse.bin, wstats.bin. Outputs: DIR/<schedule>_{loss,lse,wstats,grad}.bin and
// <schedule>_launches.txt. Exit status 3 with the message on stderr when a kernel fails.
//
// crm keys: dtype=f32|f16|bf16|f64 tf32=0|1 N Ci H W Co kh kw sh sw ph pw pkh pkw psh psw bias=0|1
// need=<3 chars of 0|1: dx, dw, db> sm_count schedule, version=1|2 (the forward kernels' first
// version or the second; default 2). Inputs in DIR (NHWC, as the CUDA wrapper makes them): x.bin, w.bin
// (Co x kh x kw x Ci, compute type: the driver packs it for the forward and, transposed, for the
// data gradient, as the CUDA wrapper does), bias.bin (acc), gy.bin. Outputs:
// DIR/<schedule>_{out,code,dx,dw,db}.bin.
#include "cuda/emulation.h"
#include "cuda/softmax_cross_entropy_kernels.h"
#include "cuda/conv_relu_maxpool_kernels.h"
#include "common/conv_relu_maxpool_index.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace selftest {
using Fn = std::function<std::string(const std::vector<float>&)>;
const std::map<std::string, Fn>& selftests();
}

namespace {

using pyalexnet::xent::DType;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const void* p, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(p), std::streamsize(n));
  if (!f) throw std::runtime_error("cannot write " + path);
}

// A heap buffer of exactly `bytes` bytes starting `offset` bytes past a 64-byte boundary: ASan flags
// any access past its end. Filled from `data` (or with 0xFF bytes: NaN, for outputs).
struct Buffer {
  unsigned char* base = nullptr;
  unsigned char* p = nullptr;
  size_t bytes = 0;
  Buffer(size_t n, size_t offset, const std::string* data = nullptr) : bytes(n) {
    void* b = nullptr;
    if (posix_memalign(&b, 64, offset + n + (offset + n == 0)) != 0) throw std::bad_alloc();
    base = static_cast<unsigned char*>(b);
    p = base + offset;
    if (data) {
      if (data->size() != n)
        throw std::runtime_error("input of " + std::to_string(data->size()) + " bytes, expected " + std::to_string(n));
      std::memcpy(p, data->data(), n);
    } else {
      std::memset(p, 0xFF, n);
    }
  }
  ~Buffer() { std::free(base); }
  Buffer(const Buffer&) = delete;
};

int run_xent(const std::string& dir, std::map<std::string, std::string>& kv) {
  auto i64 = [&](const char* k) { return std::stoll(kv.at(k)); };
  const std::string dt = kv.at("dtype");
  const DType dtype = dt == "f32" ? DType::kFloat : dt == "f16" ? DType::kHalf : dt == "bf16" ? DType::kBFloat16 : DType::kDouble;
  const size_t es = dt == "f32" ? 4 : dt == "f64" ? 8 : 2, as = dt == "f64" ? 8 : 4;
  const bool i32 = kv.at("tgt") == "i32";
  const size_t ts = i32 ? 4 : 8;
  const int64_t N = i64("N"), C = i64("C"), rs = i64("row_stride"), off = i64("offset"), tst = i64("target_stride");
  const int red = int(i64("reduction"));
  const bool weighted = i64("weighted") != 0, backward_only = kv.at("phase") == "backward";
  const std::string sched = kv.at("schedule");
  pya_emu::set_schedule(sched == "desc" ? pya_emu::Schedule::kDescending : pya_emu::Schedule::kAscending);

  const std::string logits_in = read_file(dir + "/logits.bin"), target_in = read_file(dir + "/target.bin");
  Buffer x(N ? size_t((N - 1) * rs + C) * es : 0, size_t(off) * es, &logits_in);
  Buffer t(N ? size_t((N - 1) * tst + 1) * ts : 0, 0, &target_in);
  std::string weight_in = weighted ? read_file(dir + "/weight.bin") : std::string();
  Buffer w(weighted ? size_t(C) * as : 0, 0, weighted ? &weight_in : nullptr);
  const size_t nloss = red == 0 ? size_t(N) : 1;
  Buffer loss(nloss * es, 0), wstats(2 * as, 0), grad(size_t(N * C) * es, size_t(off) * es);
  Buffer row_loss(red == 0 ? 0 : size_t(N) * as, 0), row_w(size_t(N) * as, 0);
  std::string lse_in, wstats_in;
  if (backward_only) lse_in = read_file(dir + "/lse.bin"), wstats_in = read_file(dir + "/wstats.bin");
  Buffer lse(size_t(2 * N) * as, 0, backward_only ? &lse_in : nullptr);
  if (backward_only) std::memcpy(wstats.p, wstats_in.data(), std::min(wstats_in.size(), wstats.bytes));
  const double eps = std::stod(kv.at("smoothing"));
  const int64_t ignore = i64("ignore_index");

  if (!backward_only) {
    pyalexnet::xent::ForwardArgs a{};
    a.dtype = dtype, a.target_i32 = i32, a.logits = x.p, a.N = N, a.C = C, a.row_stride = rs;
    a.target = t.p, a.target_stride = tst, a.weight = weighted ? w.p : nullptr, a.ignore_index = ignore;
    a.reduction = red, a.label_smoothing = eps, a.loss = loss.p, a.lse = lse.p, a.wstats = wstats.p;
    a.row_loss = red == 0 ? nullptr : row_loss.p, a.row_weight = row_w.p;
    if (pyalexnet::xent::launch_softmax_cross_entropy_forward(a, nullptr) != cudaSuccess) return 4;
  }
  const std::string grad_in = read_file(dir + "/grad.bin");
  Buffer go(grad_in.size(), 0, &grad_in);
  pyalexnet::xent::BackwardArgs b{};
  b.dtype = dtype, b.target_i32 = i32, b.grad_loss = go.p, b.grad_stride = red == 0 ? 1 : 0;
  b.logits = x.p, b.N = N, b.C = C, b.row_stride = rs, b.target = t.p, b.target_stride = tst;
  b.weight = weighted ? w.p : nullptr, b.lse = lse.p, b.wstats = wstats.p, b.ignore_index = ignore;
  b.reduction = red, b.label_smoothing = eps, b.grad_logits = grad.p;
  if (pyalexnet::xent::launch_softmax_cross_entropy_backward(b, nullptr) != cudaSuccess) return 4;

  const std::string pre = dir + "/" + sched + "_";
  write_file(pre + "loss.bin", loss.p, loss.bytes);
  write_file(pre + "lse.bin", lse.p, lse.bytes);
  write_file(pre + "wstats.bin", wstats.p, wstats.bytes);
  write_file(pre + "grad.bin", grad.p, grad.bytes);
  return 0;
}

// w (Co x kh x kw x Ci, compute type, cs bytes an element) packed as the CUDA wrapper packs it:
// rows x (tap, channel < cp), each tap's channels zero-padded to cp, rows zero-padded to the K
// multiple km. transposed: rows Ci, channels Co (the data gradient's wt); else rows Co, channels Ci
// (the forward's w).
std::string pack_weights(const std::string& w, const pyalexnet::crm::Shape& g, bool transposed, int64_t cp,
                         int64_t km, size_t cs) {
  const int64_t taps = g.kh * g.kw, rows = transposed ? g.Ci : g.Co, chans = transposed ? g.Co : g.Ci;
  const int64_t kp = (taps * cp + km - 1) / km * km;
  if (w.size() != size_t(g.Co * taps * g.Ci) * cs)
    throw std::runtime_error("w.bin: " + std::to_string(w.size()) + " bytes, expected Co x kh x kw x Ci elements");
  std::string out(size_t(rows * kp) * cs, '\0');
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < chans; ++c) {
        const int64_t co = transposed ? c : r, ci = transposed ? r : c;
        std::memcpy(out.data() + size_t(r * kp + t * cp + c) * cs, w.data() + size_t((co * taps + t) * g.Ci + ci) * cs, cs);
      }
  return out;
}

int run_crm(const std::string& dir, std::map<std::string, std::string>& kv) {
  namespace crm = pyalexnet::crm;
  auto i64 = [&](const char* k) { return std::stoll(kv.at(k)); };
  const std::string dt = kv.at("dtype");
  const crm::DType dtype = dt == "f32" ? crm::DType::kFloat : dt == "f16" ? crm::DType::kHalf
                           : dt == "bf16" ? crm::DType::kBFloat16 : crm::DType::kDouble;
  const size_t es = dt == "f32" ? 4 : dt == "f64" ? 8 : 2, as = dt == "f64" ? 8 : 4;
  const size_t cs = dt == "f16" || dt == "bf16" ? 2 : as;  // compute type
  const std::string sched = kv.at("schedule");
  pya_emu::set_schedule(sched == "desc" ? pya_emu::Schedule::kDescending : pya_emu::Schedule::kAscending);
  crm::Shape g{};
  g.N = i64("N"), g.Ci = i64("Ci"), g.H = i64("H"), g.W = i64("W"), g.Co = i64("Co"), g.kh = i64("kh"), g.kw = i64("kw");
  g.sh = i64("sh"), g.sw = i64("sw"), g.ph = i64("ph"), g.pw = i64("pw");
  g.pkh = i64("pkh"), g.pkw = i64("pkw"), g.psh = i64("psh"), g.psw = i64("psw");
  g.Hc = crm::conv_out_size(g.H, g.kh, g.sh, g.ph), g.Wc = crm::conv_out_size(g.W, g.kw, g.sw, g.pw);
  g.Hp = crm::pool_out_size(g.Hc, g.pkh, g.psh), g.Wp = crm::pool_out_size(g.Wc, g.pkw, g.psw);
  const int64_t wcode = crm::code_width(g.Wp, g.pkh, g.pkw);
  const bool tf32 = i64("tf32") != 0, has_bias = i64("bias") != 0;
  const int version = kv.count("version") ? int(i64("version")) : 2;
  const std::string need = kv.at("need");
  const std::string x_in = read_file(dir + "/x.bin"), w_in = read_file(dir + "/w.bin");
  const std::string b_in = has_bias ? read_file(dir + "/bias.bin") : std::string(), gy_in = read_file(dir + "/gy.bin");
  const int64_t km = crm::conv_relu_maxpool_k_multiple(dtype, tf32);
  const std::string wt_in = pack_weights(w_in, g, true, crm::conv_relu_maxpool_dgrad_channels(dtype, tf32, g.Co), km, cs);
  Buffer x(x_in.size(), 0, &x_in), wt(wt_in.size(), 0, &wt_in), gy(gy_in.size(), 0, &gy_in);
  Buffer xr(tf32 ? x_in.size() : 0, 0);  // tf32: the backward's x, rounded (as the CUDA wrapper)
  Buffer bias(b_in.size(), 0, has_bias ? &b_in : nullptr);
  const size_t nout = size_t(g.N * g.Hp * g.Wp * g.Co), ncode = size_t(g.N * g.Hp * wcode * g.Co);
  Buffer out(nout * es, 0), code(ncode, 0);
  crm::ForwardArgs f{};
  const std::string w_packed = pack_weights(w_in, g, false, crm::conv_relu_maxpool_packed_channels(dtype, tf32, g.Ci), km, cs);
  Buffer wp(w_packed.size(), 0, &w_packed);
  if (tf32) {  // as the CUDA wrapper: packed float32 weights rounded to TF32 by the kernels' own launch
    auto round = [](const Buffer& src, Buffer& dst) {
      return crm::launch_conv_relu_maxpool_round_tf32(static_cast<const float*>(static_cast<const void*>(src.p)),
                                                      static_cast<float*>(static_cast<void*>(dst.p)), int64_t(src.bytes / 4), nullptr);
    };
    if (round(wp, wp) != cudaSuccess || round(wt, wt) != cudaSuccess || round(x, xr) != cudaSuccess) return 4;
  }
  f.dtype = dtype, f.tf32 = tf32, f.version = version, f.g = g, f.x = x.p, f.w = wp.p, f.Kp = int64_t(wp.bytes / cs) / g.Co;
  f.bias = has_bias ? bias.p : nullptr, f.out = out.p, f.code = code.p;
  Buffer fws(size_t(crm::conv_relu_maxpool_forward_workspace_bytes(f)), 0);  // 0xFF: NaN where unwritten
  f.workspace = fws.bytes ? fws.p : nullptr;
  if (crm::launch_conv_relu_maxpool_forward(f, nullptr) != cudaSuccess) return 4;
  Buffer dx(need[0] == '1' ? x_in.size() : 0, 0), dw(need[1] == '1' ? size_t(g.Co * g.Ci * g.kh * g.kw) * es : 0, 0);
  Buffer db(need[2] == '1' ? size_t(g.Co) * es : 0, 0);
  crm::BackwardArgs b{};
  b.dtype = dtype, b.tf32 = tf32, b.g = g, b.sm_count = int(i64("sm_count"));
  b.gy = gy.p, b.code = code.p, b.x = tf32 ? xr.p : x.p, b.wt = wt.p, b.Kdp = int64_t(wt_in.size() / cs) / g.Ci;
  b.dx = need[0] == '1' ? dx.p : nullptr, b.dw = need[1] == '1' ? dw.p : nullptr, b.db = need[2] == '1' ? db.p : nullptr;
  Buffer ws(size_t(crm::conv_relu_maxpool_backward_workspace_bytes(b)), 0);
  b.workspace = ws.p;
  if (crm::launch_conv_relu_maxpool_backward(b, nullptr) != cudaSuccess) return 4;
  const std::string pre = dir + "/" + sched + "_";
  write_file(pre + "out.bin", out.p, out.bytes);
  write_file(pre + "code.bin", code.p, code.bytes);
  write_file(pre + "dx.bin", dx.p, dx.bytes);
  write_file(pre + "dw.bin", dw.p, dw.bytes);
  write_file(pre + "db.bin", db.p, db.bytes);
  return 0;
}

int run_selftest(const std::string& name, const std::string& dir, std::map<std::string, std::string>& kv) {
  const std::string sched = kv.count("schedule") ? kv.at("schedule") : "asc";
  pya_emu::set_schedule(sched == "desc" ? pya_emu::Schedule::kDescending : pya_emu::Schedule::kAscending);
  const auto& m = selftest::selftests();
  auto it = m.find(name);
  if (it == m.end()) throw std::runtime_error("no self-test " + name);
  std::vector<float> in;
  std::ifstream probe(dir + "/in.bin");
  if (probe) {
    std::string s = read_file(dir + "/in.bin");
    in.resize(s.size() / 4);
    std::memcpy(in.data(), s.data(), in.size() * 4);
  }
  const std::string out = it->second(in);
  write_file(dir + "/" + sched + "_out.bin", out.data(), out.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: driver xent|crm DIR key=value... | driver selftest NAME DIR key=value...\n");
    return 2;
  }
  const std::string cmd = argv[1];
  const int first = cmd == "selftest" ? 4 : 3;
  std::map<std::string, std::string> kv;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    size_t e = a.find('=');
    if (e == std::string::npos) {
      std::fprintf(stderr, "bad argument %s\n", argv[i]);
      return 2;
    }
    kv[a.substr(0, e)] = a.substr(e + 1);
  }
  const std::string dir = cmd == "selftest" ? argv[3] : argv[2];
  int rc = 2;
  try {
    rc = cmd == "xent" ? run_xent(dir, kv) : cmd == "crm" ? run_crm(dir, kv)
         : cmd == "selftest" ? run_selftest(argv[2], dir, kv) : 2;
  } catch (const pya_emu::KernelError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "KernelError: %s\n", e.what());
    rc = 3;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "driver error: %s\n", e.what());
    rc = 2;
  }
  std::string log;
  for (auto& l : pya_emu::launch_log()) log += l + "\n";
  const std::string sched = kv.count("schedule") ? kv.at("schedule") : "asc";
  try {
    write_file(dir + "/" + sched + "_launches.txt", log.data(), log.size());
  } catch (...) {
  }
  return rc;
}
