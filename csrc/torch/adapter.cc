#include "adapter.h"

#include <ATen/Parallel.h>
#include <ATen/ScalarOps.h>

#include <algorithm>

#include <stdexcept>

#include "output_pool.h"

namespace bluefog {
namespace torch_frontend {

DataType ToDataType(at::ScalarType type) {
  switch (type) {
    case at::kByte: return DataType::UINT8;
    case at::kChar: return DataType::INT8;
    case at::kShort: return DataType::INT16;
    case at::kInt: return DataType::INT32;
    case at::kLong: return DataType::INT64;
    case at::kHalf: return DataType::FLOAT16;
    case at::kFloat: return DataType::FLOAT32;
    case at::kDouble: return DataType::FLOAT64;
    case at::kBFloat16: return DataType::BFLOAT16;
    case at::kBool: return DataType::BOOL;
    default:
      throw std::invalid_argument(std::string("Tensor type ") + c10::toString(type) + " is not supported.");
  }
}

TorchTensor::TorchTensor(at::Tensor tensor)
    : tensor_(std::move(tensor)),
      dtype_(ToDataType(tensor_.scalar_type())),
      shape_(tensor_.sizes().begin(), tensor_.sizes().end()),
      size_bytes_(static_cast<int64_t>(tensor_.numel()) * static_cast<int64_t>(tensor_.element_size())),
      device_(tensor_.is_cuda() ? tensor_.get_device() : kCpuDevice) {}

namespace {

// out[i] = self_weight * x[i] + sum_k w_k * received[k][i], accumulated in
// double, for elements [begin, end): one pass over the inputs, no temporaries.
// received[k] starts `stride` elements after received[k - 1].
template <typename T>
inline __attribute__((always_inline)) void CombineRange(const T* x, const T* received, int64_t stride,
                                                        double self_weight, const double* weights, size_t n_weights,
                                                        T* out, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 512;
  double acc[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t m = std::min(kBlock, end - start);
    const T* xs = x + start;
    for (int64_t i = 0; i < m; ++i) acc[i] = self_weight * static_cast<double>(xs[i]);
    for (size_t k = 0; k < n_weights; ++k) {
      if (weights[k] == 0.0) continue;  // as the ATen path: a zero weight ignores that input entirely
      const T* r = received + static_cast<int64_t>(k) * stride + start;
      const double w = weights[k];
      for (int64_t i = 0; i < m; ++i) acc[i] += w * static_cast<double>(r[i]);
    }
    T* o = out + start;
    for (int64_t i = 0; i < m; ++i) o[i] = static_cast<T>(acc[i]);
  }
}

// The same sums, in the same order, for exactly K sources with non-zero
// weights, in one loop without the accumulator array (the common cases).
template <int K, typename T>
inline __attribute__((always_inline)) void CombineK(const T* x, const T* received, int64_t stride, double self_weight,
                                                    const double* weights, T* out, int64_t begin, int64_t end) {
  const T* r[K];
  double w[K];
  for (int k = 0; k < K; ++k) {
    r[k] = received + k * stride;
    w[k] = weights[k];
  }
  for (int64_t i = begin; i < end; ++i) {
    double acc = self_weight * static_cast<double>(x[i]);
    for (int k = 0; k < K; ++k) acc += w[k] * static_cast<double>(r[k][i]);
    out[i] = static_cast<T>(acc);
  }
}

template <typename T>
inline __attribute__((always_inline)) void Combine(const T* x, const T* received, int64_t stride, double self_weight,
                                                   const double* weights, size_t n_weights, T* out, int64_t begin,
                                                   int64_t end) {
  bool all_nonzero = true;
  for (size_t k = 0; k < n_weights; ++k) all_nonzero = all_nonzero && weights[k] != 0.0;
  if (all_nonzero && n_weights == 1) return CombineK<1>(x, received, stride, self_weight, weights, out, begin, end);
  if (all_nonzero && n_weights == 2) return CombineK<2>(x, received, stride, self_weight, weights, out, begin, end);
  if (all_nonzero && n_weights == 3) return CombineK<3>(x, received, stride, self_weight, weights, out, begin, end);
  CombineRange(x, received, stride, self_weight, weights, n_weights, out, begin, end);
}

// On x86-64 with GCC 11+ and glibc (ifunc), copies of the loops for AVX-512 and
// AVX2/FMA machines, picked at load time (the baseline build only has SSE2:
// two doubles per step). With FMA a product and its sum may be rounded once
// instead of twice; the result is still the double sum rounded once to T.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__GLIBC__)
#define BLUEFOG_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BLUEFOG_SIMD_CLONES
#endif

// One overload per type (the clones are per function), called with the
// weights as a pointer and a count.
BLUEFOG_SIMD_CLONES void CombineSpan(const float* x, const float* received, int64_t stride, double self_weight,
                                     const double* weights, size_t n_weights, float* out, int64_t begin, int64_t end) {
  Combine(x, received, stride, self_weight, weights, n_weights, out, begin, end);
}

BLUEFOG_SIMD_CLONES void CombineSpan(const double* x, const double* received, int64_t stride, double self_weight,
                                     const double* weights, size_t n_weights, double* out, int64_t begin,
                                     int64_t end) {
  Combine(x, received, stride, self_weight, weights, n_weights, out, begin, end);
}

// Whether each received[k] is contiguous (received itself may be a view with
// a gap between the rows: the fused exchange's receive buffer).
bool RowsContiguous(const at::Tensor& r) {
  int64_t expected = 1;
  for (int64_t d = r.dim() - 1; d >= 1; --d) {
    if (r.size(d) != 1 && r.stride(d) != expected) return false;
    expected *= r.size(d);
  }
  return r.size(0) <= 1 || r.stride(0) >= expected;
}

template <typename T>
at::Tensor CombineDirect(const at::Tensor& x, const at::Tensor& received, double self_weight,
                         const std::vector<double>& weights) {
  at::Tensor result = EmptyOutput(x.sizes(), x.options(), x.data_ptr());
  const int64_t n = x.numel();
  const int64_t stride = weights.empty() ? n : received.stride(0);
  const T* xp = x.data_ptr<T>();
  const T* rp = received.data_ptr<T>();
  T* op = result.data_ptr<T>();
  at::parallel_for(0, n, 64 * 1024, [&](int64_t begin, int64_t end) {
    CombineSpan(xp, rp, stride, self_weight, weights.data(), weights.size(), op, begin, end);
  });
  return result;
}

}  // namespace

at::Tensor CombineNeighbors(const at::Tensor& x, const at::Tensor& received, double self_weight,
                            const std::vector<double>& src_weights) {
  // The common case (CPU float32/float64, the core's contiguous output) in one
  // fused pass: a few microseconds of ATen dispatch less per op, and one read
  // of each input instead of one pass per neighbor for large tensors.
  const bool direct = x.device().is_cpu() && x.is_contiguous() && received.device().is_cpu() &&
                      received.scalar_type() == x.scalar_type() && received.dim() == x.dim() + 1 &&
                      received.size(0) == static_cast<int64_t>(src_weights.size()) &&
                      received.numel() == x.numel() * received.size(0) && RowsContiguous(received);
  if (direct && x.scalar_type() == at::kFloat) return CombineDirect<float>(x, received, self_weight, src_weights);
  if (direct && x.scalar_type() == at::kDouble) return CombineDirect<double>(x, received, self_weight, src_weights);
  const bool half = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const at::ScalarType compute = half ? at::kFloat : x.scalar_type();
  // x * self_weight (the kernel Python's `x * w` runs) into a pooled output.
  const at::Tensor xc = x.to(compute);
  at::Tensor result = EmptyOutput(xc.sizes(), xc.options(), x.data_ptr());
  at::mul_out(result, xc, at::native::wrapped_scalar_tensor(self_weight));
  for (size_t k = 0; k < src_weights.size(); ++k) {
    if (src_weights[k] != 0.0) result.add_(received[static_cast<int64_t>(k)].to(compute), src_weights[k]);
  }
  return result.to(x.scalar_type());
}

void TorchOpContext::Adopt(const at::Tensor& t, std::shared_ptr<Tensor>* output) {
  {
    std::lock_guard<std::mutex> lock(record_->mu);
    record_->output = t;
  }
  *output = std::make_shared<TorchTensor>(t);
}

Status TorchOpContext::AllocateOutput(const Shape& shape, std::shared_ptr<Tensor>* output) {
  try {
    Adopt(EmptyOutput(at::IntArrayRef(shape), options_, near_), output);
    return Status::OK();
  } catch (const std::exception& e) {
    return Status::Aborted(std::string("cannot allocate the output: ") + e.what());
  }
}

std::shared_ptr<Tensor> TorchOpContext::SharedBuffer(int64_t elements) {
  if (options_.device().type() != c10::kCPU) return nullptr;
  try {
    return std::make_shared<TorchTensor>(EmptyOutput({elements}, options_, near_));
  } catch (const std::exception&) {
    return nullptr;
  }
}

bool TorchOpContext::ViewOutput(const std::shared_ptr<Tensor>& buffer, int64_t offset, int64_t outer_stride,
                                const Shape& shape, std::shared_ptr<Tensor>* output) {
  const auto* base = dynamic_cast<const TorchTensor*>(buffer.get());
  if (!base || base->tensor().scalar_type() != options_.dtype().toScalarType() ||
      base->tensor().device() != options_.device() || shape.empty()) {
    return false;
  }
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 1;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  strides[0] = outer_stride;
  const int64_t last = offset + (shape[0] > 0 ? (shape[0] - 1) * outer_stride + stride : 0);
  if (offset < 0 || stride > outer_stride || last > base->tensor().numel()) return false;
  try {
    Adopt(base->tensor().as_strided(at::IntArrayRef(shape), strides, offset), output);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace torch_frontend
}  // namespace bluefog
