#include "adapter.h"

#include <ATen/ScalarOps.h>

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

at::Tensor CombineNeighbors(const at::Tensor& x, const at::Tensor& received, double self_weight,
                            const std::vector<double>& src_weights) {
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
