#include "adapter.h"

#include <string>

#include "tensorflow/core/framework/tensor_shape.h"

namespace bluefog {
namespace tf_frontend {

bool ToDataType(tensorflow::DataType type, DataType* out) {
  switch (type) {
    case tensorflow::DT_UINT8: *out = DataType::UINT8; return true;
    case tensorflow::DT_INT8: *out = DataType::INT8; return true;
    case tensorflow::DT_INT16: *out = DataType::INT16; return true;
    case tensorflow::DT_INT32: *out = DataType::INT32; return true;
    case tensorflow::DT_INT64: *out = DataType::INT64; return true;
    case tensorflow::DT_HALF: *out = DataType::FLOAT16; return true;
    case tensorflow::DT_FLOAT: *out = DataType::FLOAT32; return true;
    case tensorflow::DT_DOUBLE: *out = DataType::FLOAT64; return true;
    case tensorflow::DT_BFLOAT16: *out = DataType::BFLOAT16; return true;
    case tensorflow::DT_BOOL: *out = DataType::BOOL; return true;
    default: return false;
  }
}

absl::Status ToTfStatus(const Status& status) {
  switch (status.type()) {
    case StatusType::OK: return absl::OkStatus();
    case StatusType::INVALID_ARGUMENT: return absl::InvalidArgumentError(status.reason());
    case StatusType::PRECONDITION_ERROR: return absl::FailedPreconditionError(status.reason());
    case StatusType::ABORTED: return absl::AbortedError(status.reason());
    default: return absl::UnknownError(status.reason());
  }
}

TfTensor::TfTensor(const tensorflow::Tensor& tensor, DataType dtype) : tensor_(tensor), dtype_(dtype) {
  const int dims = tensor.dims();
  shape_.reserve(dims);
  for (int i = 0; i < dims; ++i) shape_.push_back(tensor.dim_size(i));
}

void* TfTensor::data() const {
  // The core writes only into output tensors, which the kernel owns.
  return const_cast<char*>(tensor_.tensor_data().data());
}

Status TfOpContext::AllocateOutput(const Shape& shape, std::shared_ptr<Tensor>* output) {
  tensorflow::TensorShape tf_shape;
  absl::Status s = tensorflow::TensorShape::BuildTensorShape(shape, &tf_shape);
  if (s.ok()) {
    tensorflow::Tensor* out = nullptr;
    s = context_->allocate_output(index_, tf_shape, &out);
    if (s.ok()) {
      *output = std::make_shared<TfTensor>(*out, dtype_);
      return Status::OK();
    }
  }
  return Status::Aborted("cannot allocate the output: " + std::string(s.message()));
}

}  // namespace tf_frontend
}  // namespace bluefog
