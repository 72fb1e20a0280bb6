// A persistent, growable staging buffer for fused ops.
//
// Its start is offset from a 4 KiB page boundary: on this class of machine a
// large memcpy whose source and destination sit at (nearly) the same offset
// inside a page runs many times slower (4K aliasing), and frontends' tensors
// usually start page- or 64-byte-aligned.
#ifndef BLUEFOG_COMMON_FUSION_BUFFER_H
#define BLUEFOG_COMMON_FUSION_BUFFER_H

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace bluefog {

class FusionBuffer {
 public:
  static constexpr size_t kPageOffset = 2048 + 64;

  // Returns a pointer to at least `bytes` bytes (reused across calls), or
  // nullptr when that much memory cannot be had.
  char* Reserve(size_t bytes) {
    if (bytes > capacity_) {
      size_t want = bytes + bytes / 4;
      storage_.reset(static_cast<char*>(std::aligned_alloc(4096, RoundUp(want + kPageOffset, 4096))));
      capacity_ = storage_ ? want : 0;
      if (!storage_) return nullptr;
    }
    return storage_.get() + kPageOffset;
  }
  void Release() {
    storage_.reset();
    capacity_ = 0;
  }

 private:
  static size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> storage_;
  size_t capacity_ = 0;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_FUSION_BUFFER_H
