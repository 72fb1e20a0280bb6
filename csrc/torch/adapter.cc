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
template <typename T>
void CombineRange(const T* x, const T* received, int64_t n, double self_weight, const std::vector<double>& weights,
                  T* out, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 512;
  double acc[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t m = std::min(kBlock, end - start);
    const T* xs = x + start;
    for (int64_t i = 0; i < m; ++i) acc[i] = self_weight * static_cast<double>(xs[i]);
    for (size_t k = 0; k < weights.size(); ++k) {
      if (weights[k] == 0.0) continue;  // as the ATen path: a zero weight ignores that input entirely
      const T* r = received + static_cast<int64_t>(k) * n + start;
      const double w = weights[k];
      for (int64_t i = 0; i < m; ++i) acc[i] += w * static_cast<double>(r[i]);
    }
    T* o = out + start;
    for (int64_t i = 0; i < m; ++i) o[i] = static_cast<T>(acc[i]);
  }
}

template <typename T>
at::Tensor CombineDirect(const at::Tensor& x, const at::Tensor& received, double self_weight,
                         const std::vector<double>& weights) {
  at::Tensor result = EmptyOutput(x.sizes(), x.options(), x.data_ptr());
  const int64_t n = x.numel();
  const T* xp = x.data_ptr<T>();
  const T* rp = received.data_ptr<T>();
  T* op = result.data_ptr<T>();
  at::parallel_for(0, n, 64 * 1024, [&](int64_t begin, int64_t end) {
    CombineRange(xp, rp, n, self_weight, weights, op, begin, end);
  });
  return result;
}

}  // namespace

at::Tensor CombineNeighbors(const at::Tensor& x, const at::Tensor& received, double self_weight,
                            const std::vector<double>& src_weights) {
  // The common case (CPU float32/float64, the core's contiguous output) in one
  // fused pass: a few microseconds of ATen dispatch less per op, and one read
  // of each input instead of one pass per neighbor for large tensors.
  const bool direct = x.device().is_cpu() && x.is_contiguous() && received.is_contiguous() &&
                      received.scalar_type() == x.scalar_type() &&
                      received.numel() == x.numel() * static_cast<int64_t>(src_weights.size());
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

Status TorchOpContext::AllocateOutput(const Shape& shape, std::shared_ptr<Tensor>* output) {
  try {
    at::Tensor t = EmptyOutput(at::IntArrayRef(shape), options_, near_);
    {
      std::lock_guard<std::mutex> lock(record_->mu);
      record_->output = t;
    }
    *output = std::make_shared<TorchTensor>(t);
    return Status::OK();
  } catch (const std::exception& e) {
    return Status::Aborted(std::string("cannot allocate the output: ") + e.what());
  }
}

}  // namespace torch_frontend
}  // namespace bluefog
