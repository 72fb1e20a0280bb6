#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#include <sys/mman.h>
#include <vector>

#include "../common/operations.h"

namespace bluefog {
namespace torch_frontend {

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kGranule = 64 * 1024;  // size classes: multiples of 64 KiB
constexpr size_t kHugePage = 2 * 1024 * 1024;
constexpr size_t kHugeFrom = 4 * 1024 * 1024;
constexpr size_t kSmallClass = 256;  // size classes below kMinPooledBytes

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define BLUEFOG_ALLOCATE_CONST
#else
#define BLUEFOG_ALLOCATE_CONST const
#endif

class PooledAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) BLUEFOG_ALLOCATE_CONST override { return Allocate(n, 0); }

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#endif

  // `offset` (a multiple of 64, below one page) is where the data starts
  // within the block's first page.
  c10::DataPtr Allocate(size_t n, size_t offset) BLUEFOG_ALLOCATE_CONST {
    // Below kMinPooledBytes: 256-byte classes, at offset 0 (such copies are
    // too short for 4K aliasing to matter). Above: room for the offset;
    // page-sized classes, and 64 KiB ones from 64 KiB.
    size_t capacity;
    if (n < kMinPooledBytes) {
      capacity = std::max<size_t>(kSmallClass, (n + kSmallClass - 1) / kSmallClass * kSmallClass);
      offset = 0;
    } else {
      capacity = n + kPage < kGranule ? (n + 2 * kPage - 1) / kPage * kPage
                                      : (n + kPage + kGranule - 1) / kGranule * kGranule;
    }
    if (capacity >= kHugeFrom) capacity = (capacity + kHugePage - 1) / kHugePage * kHugePage;
    Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(capacity);
      if (it != free_.end() && !it->second.empty()) {
        block = it->second.back();
        it->second.pop_back();
        cached_ -= capacity;
      }
    }
    if (!block) {
      // Large blocks: 2 MiB aligned and advised for transparent huge pages
      // (fewer TLB misses while MPI streams through them; numpy does the same).
      const bool huge = capacity >= kHugeFrom;
      void* base = std::aligned_alloc(huge ? kHugePage : capacity < kMinPooledBytes ? 64 : kPage, capacity);
      if (!base) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (huge) madvise(base, capacity, MADV_HUGEPAGE);
#endif
      block = new Block{base, capacity};
    }
    return c10::DataPtr(static_cast<char*>(block->base) + offset, block, &Release, c10::Device(c10::kCPU));
  }

  size_t cached() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

 private:
  struct Block {
    void* base;
    size_t capacity;
  };

  static void Release(void* context);

  mutable std::mutex mu_;
  // capacity -> free blocks (a list per size class, so that returning a block
  // to the cache does not allocate once the class has been used)
  mutable std::map<size_t, std::vector<Block*>> free_;
  mutable size_t cached_ = 0;
};

// Never destroyed: tensors may be freed during interpreter teardown.
PooledAllocator& Pool() {
  static PooledAllocator* pool = new PooledAllocator();
  return *pool;
}

void PooledAllocator::Release(void* context) {
  auto* block = static_cast<Block*>(context);
  PooledAllocator& pool = Pool();
  const int64_t limit = OutputCacheBytes();
  {
    std::lock_guard<std::mutex> lock(pool.mu_);
    if (static_cast<int64_t>(pool.cached_ + block->capacity) <= limit) {
      pool.free_[block->capacity].push_back(block);
      pool.cached_ += block->capacity;
      return;
    }
  }
  std::free(block->base);
  delete block;
}

}  // namespace

at::Tensor EmptyOutput(at::IntArrayRef shape, const at::TensorOptions& options, const void* near) {
  const int64_t numel = c10::multiply_integers(shape);
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  const bool cpu = options.device().type() == c10::kCPU && options.layout() == c10::kStrided;
  if (!cpu || options.pinned_memory() || nbytes == 0) return at::empty(shape, options);
  // (Neither this nor the pool fills new memory under torch's deterministic
  // mode, as at::empty would: every op writes its whole output.)
  if (OutputCacheBytes() <= 0) return at::detail::empty_cpu(shape, c10::typeMetaToScalarType(options.dtype()));
  // Half a page away from the source's offset, keeping 64-byte alignment.
  const size_t near_offset = reinterpret_cast<uintptr_t>(near) % kPage;
  const size_t offset = ((near_offset + kPage / 2) % kPage) / 64 * 64;
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, Pool().Allocate(nbytes, offset), &Pool(),
                       /*resizable=*/true);
  // What at::empty does, without its dispatch: a plain CPU tensor on this storage.
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                          options.dtype());
  t.unsafeGetTensorImpl()->set_sizes_contiguous(shape);
  return t;
}

size_t CachedOutputBytes() { return Pool().cached(); }

}  // namespace torch_frontend
}  // namespace bluefog
