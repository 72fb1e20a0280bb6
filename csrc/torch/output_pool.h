// Reused CPU memory for op outputs (allreduce, broadcast, neighbor ops).
//
// A fresh multi-megabyte output costs a page fault (and the zeroing of a page)
// for every 4 KiB the op writes: for a 16 MiB allreduce that is as much time as
// the reduction itself; smaller outputs made and dropped at a high rate (a fused
// batch of 16 KiB neighbor_allreduce ops) cost malloc/free and, when the heap is
// trimmed, page faults too. CPU outputs come from here instead: when the user
// drops such a tensor its memory returns to a cache, and the next output of the
// same size class (multiples of 256 bytes below kMinPooledBytes, whole pages
// below 64 KiB, multiples of 64 KiB above) reuses it, already mapped. The cache
// keeps at most BLUEFOG_OUTPUT_CACHE_BYTES of free memory (0: no cache).
// (A 4 KiB output from the cache instead of malloc: an out-of-place 4 KiB
// allreduce costs 0.5 us more than an in-place one on one rank, not 0.9-1.1.)
//
// Blocks of 4 MiB and more are 2 MiB aligned and advised for transparent huge
// pages. Each output of at least kMinPooledBytes also starts at a different
// offset within a 4 KiB page than the tensor it is computed from, so copies
// between the two do not suffer 4K aliasing. The tensors are ordinary
// resizable CPU tensors.
#ifndef BLUEFOG_TORCH_OUTPUT_POOL_H
#define BLUEFOG_TORCH_OUTPUT_POOL_H

#include <torch/extension.h>

namespace bluefog {
namespace torch_frontend {

constexpr size_t kMinPooledBytes = 8 * 1024;

// An uninitialized contiguous tensor of `shape` with `options`; `near` is the
// data of the tensor it will be computed from (nullptr if none).
at::Tensor EmptyOutput(at::IntArrayRef shape, const at::TensorOptions& options, const void* near);

// Bytes of free memory the cache holds now (for tests).
size_t CachedOutputBytes();

}  // namespace torch_frontend
}  // namespace bluefog

#endif  // BLUEFOG_TORCH_OUTPUT_POOL_H
