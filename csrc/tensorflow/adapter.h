// Adapts tensorflow::Tensor to the core's Tensor / OpContext seam, and the
// core's Status to TensorFlow's. Our code stays in namespace bluefog (TF's
// headers define their own namespaces, e.g. `core`).
#ifndef BLUEFOG_TENSORFLOW_ADAPTER_H
#define BLUEFOG_TENSORFLOW_ADAPTER_H

#include <memory>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

#include "../common/status.h"
#include "../common/tensor.h"

namespace bluefog {
namespace tf_frontend {

// Maps a TensorFlow dtype; false for a dtype the core does not carry.
bool ToDataType(tensorflow::DataType type, DataType* out);

// The core's Status as a TensorFlow status (InvalidArgument, FailedPrecondition,
// Aborted, Unknown), keeping the core's message.
absl::Status ToTfStatus(const Status& status);

// Holds a reference to the TensorFlow buffer for as long as the core uses it.
class TfTensor : public Tensor {
 public:
  TfTensor(const tensorflow::Tensor& tensor, DataType dtype);
  DataType dtype() const override { return dtype_; }
  const Shape& shape() const override { return shape_; }
  void* data() const override;
  int64_t size_bytes() const override { return static_cast<int64_t>(tensor_.TotalBytes()); }
  int device() const override { return kCpuDevice; }

 private:
  tensorflow::Tensor tensor_;
  DataType dtype_;
  Shape shape_;
};

// Allocates output `index` of the running kernel; called by the core on its
// background thread while the async kernel is still pending (its context is
// alive until `done` runs).
class TfOpContext : public OpContext {
 public:
  TfOpContext(tensorflow::OpKernelContext* context, int index, DataType dtype)
      : context_(context), index_(index), dtype_(dtype) {}
  Status AllocateOutput(const Shape& shape, std::shared_ptr<Tensor>* output) override;

 private:
  tensorflow::OpKernelContext* context_;
  int index_;
  DataType dtype_;
};

}  // namespace tf_frontend
}  // namespace bluefog

#endif  // BLUEFOG_TENSORFLOW_ADAPTER_H
