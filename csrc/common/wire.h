// Tiny byte writer/reader for the negotiation messages (little-endian host order:
// all ranks of a job share one architecture).
#ifndef BLUEFOG_COMMON_WIRE_H
#define BLUEFOG_COMMON_WIRE_H

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace bluefog {

class ByteWriter {
 public:
  explicit ByteWriter(std::string* out) : out_(out) {}
  void U8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      U8(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    U8(static_cast<uint8_t>(v));
  }
  // Zig-zag so that small negative numbers (root -1) stay short.
  void SVarint(int64_t v) { Varint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63)); }
  void F64(double v) { out_->append(reinterpret_cast<const char*>(&v), sizeof(v)); }
  void Str(const std::string& s) { Bytes(s); }
  void Bytes(std::string_view s) {
    Varint(s.size());
    out_->append(s.data(), s.size());
  }

 private:
  std::string* out_;
};

class ByteReader {
 public:
  ByteReader(const char* data, size_t size) : p_(data), end_(data + size) {}
  bool ok() const { return ok_; }
  bool done() const { return p_ >= end_; }
  // Bytes left: a bound on how many encoded items can follow (for reserve()).
  size_t remaining() const { return p_ < end_ ? static_cast<size_t>(end_ - p_) : 0; }
  uint8_t U8() {
    if (p_ >= end_) { ok_ = false; return 0; }
    return static_cast<uint8_t>(*p_++);
  }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = U8();
      if (!ok_) return 0;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ok_ = false;
    return 0;
  }
  int64_t SVarint() {
    uint64_t u = Varint();
    return static_cast<int64_t>(u >> 1) ^ -static_cast<int64_t>(u & 1);
  }
  double F64() {
    double v = 0;
    if (end_ - p_ < static_cast<ptrdiff_t>(sizeof(v))) { ok_ = false; return 0; }
    std::memcpy(&v, p_, sizeof(v));
    p_ += sizeof(v);
    return v;
  }
  std::string Str() { return std::string(View()); }
  // The next length-prefixed bytes, in place (valid while the buffer is).
  std::string_view View() {
    uint64_t n = Varint();
    if (!ok_ || static_cast<uint64_t>(end_ - p_) < n) { ok_ = false; return {}; }
    std::string_view s(p_, static_cast<size_t>(n));
    p_ += n;
    return s;
  }

 private:
  const char* p_;
  const char* end_;
  bool ok_ = true;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_WIRE_H
