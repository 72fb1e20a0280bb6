// Adapts at::Tensor to the core's Tensor / OpContext seam.
#ifndef BLUEFOG_TORCH_ADAPTER_H
#define BLUEFOG_TORCH_ADAPTER_H

#include <torch/extension.h>

#include <memory>
#include <mutex>

#include "../common/tensor.h"

namespace bluefog {
namespace torch_frontend {

// Maps a torch dtype; throws std::invalid_argument for an unsupported one.
DataType ToDataType(at::ScalarType type);

class TorchTensor : public Tensor {
 public:
  explicit TorchTensor(at::Tensor tensor);
  DataType dtype() const override { return dtype_; }
  const Shape& shape() const override { return shape_; }
  void* data() const override { return tensor_.data_ptr(); }
  int64_t size_bytes() const override { return size_bytes_; }
  int device() const override { return device_; }
  const at::Tensor& tensor() const { return tensor_; }

 private:
  at::Tensor tensor_;
  DataType dtype_;
  Shape shape_;
  int64_t size_bytes_;
  int device_;
};

// What a handle keeps alive until the user synchronizes it: the tensors, so
// that the last reference is always dropped on the user's thread.
struct HandleRecord {
  std::mutex mu;
  at::Tensor input;
  at::Tensor output;
  // neighbor_allreduce: when set, wait() returns self_weight * input +
  // sum_k src_weights[k] * output[k] instead of the received stack.
  bool combine = false;
  double self_weight = 0.0;
  std::vector<double> src_weights;
  // The op wrote into a tensor the caller already had (in place: allreduce_,
  // broadcast_, win_update, a put that scaled its tensor). wait() then bumps
  // its autograd version counter, as torch's own in-place ops do: a tensor
  // saved for backward and then overwritten makes backward() raise instead
  // of computing with the new values. (A new output needs no bump.)
  bool wrote_output = false;
  // A window op's handle (win_wait takes only these, as in 0.3).
  bool window = false;
};

// self_weight * x + sum_k src_weights[k] * received[k]. float32/float64 CPU
// tensors: one fused pass, accumulated in double (rounded once). Otherwise the
// ATen kernels of the Python reference, in float32 for 16-bit types.
at::Tensor CombineNeighbors(const at::Tensor& x, const at::Tensor& received, double self_weight,
                            const std::vector<double>& src_weights);

// Allocates an output like the input (allgather, neighbor ops), on the
// background thread; large ones come from the output pool (output_pool.h).
class TorchOpContext : public OpContext {
 public:
  TorchOpContext(std::shared_ptr<HandleRecord> record, const at::Tensor& input)
      : record_(std::move(record)), options_(input.options()), near_(input.data_ptr()) {}
  Status AllocateOutput(const Shape& shape, std::shared_ptr<Tensor>* output) override;
  std::shared_ptr<Tensor> SharedBuffer(int64_t elements) override;
  bool ViewOutput(const std::shared_ptr<Tensor>& buffer, int64_t offset, int64_t outer_stride, const Shape& shape,
                  std::shared_ptr<Tensor>* output) override;

 private:
  // Makes `t` this op's output (kept by the handle's record) and wraps it.
  void Adopt(const at::Tensor& t, std::shared_ptr<Tensor>* output);

  std::shared_ptr<HandleRecord> record_;
  at::TensorOptions options_;
  const void* near_;
};

}  // namespace torch_frontend
}  // namespace bluefog

#endif  // BLUEFOG_TORCH_ADAPTER_H
