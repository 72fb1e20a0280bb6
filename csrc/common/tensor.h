// The seam between the core and a frontend. The core sees a tensor only through
// this interface; a frontend (torch, TensorFlow, numpy, ...) adapts its own type.
#ifndef BLUEFOG_COMMON_TENSOR_H
#define BLUEFOG_COMMON_TENSOR_H

#include <memory>

#include "common.h"
#include "status.h"

namespace bluefog {

// Readiness of a tensor's producer. For a CPU tensor it is always ready; for a
// CUDA tensor a frontend records an event on the producer's stream and the
// core polls it before it communicates.
class ReadyEvent {
 public:
  virtual ~ReadyEvent() = default;
  virtual bool Ready() const = 0;
};

class Tensor {
 public:
  virtual ~Tensor() = default;
  virtual DataType dtype() const = 0;
  virtual const Shape& shape() const = 0;
  // Contiguous storage of size_bytes() bytes on device().
  virtual void* data() const = 0;
  virtual int64_t size_bytes() const = 0;
  virtual int device() const = 0;  // kCpuDevice or a GPU ordinal
};

// Allocates outputs whose shape is known only once the op runs (allgather).
// Called on the core's background thread: it must not need the frontend's
// interpreter lock.
class OpContext {
 public:
  virtual ~OpContext() = default;
  virtual Status AllocateOutput(const Shape& shape, std::shared_ptr<Tensor>* output) = 0;

  // Optional: the outputs of several ops as views into one buffer (a fused
  // exchange receives into it and copies nothing out). SharedBuffer returns
  // `elements` elements of this op's dtype, or nullptr when the frontend has no
  // such buffers. ViewOutput makes this op's output the view of `buffer` with
  // `shape`, starting `offset` elements in, its first dimension `outer_stride`
  // elements apart and the rest contiguous; false when it cannot (another
  // frontend's buffer, another dtype): the core then allocates and copies.
  // Such an output is not contiguous: the core only hands it back.
  virtual std::shared_ptr<Tensor> SharedBuffer(int64_t elements) { return nullptr; }
  virtual bool ViewOutput(const std::shared_ptr<Tensor>& buffer, int64_t offset, int64_t outer_stride,
                          const Shape& shape, std::shared_ptr<Tensor>* output) {
    return false;
  }
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_TENSOR_H
