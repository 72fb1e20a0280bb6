#include "fast_round.h"

#include <algorithm>
#include <cstring>

#include "half.h"
#include "inline_ops.h"
#include "wire.h"

namespace bluefog {

namespace {

// Header layout: [0, 4) flags (OR), [4, 8) conflict (OR), [8, 128) the
// description, compared byte for byte: [0] 1 if an op is offered, [1] dtype,
// [2] average, [4, 8) input bytes, then the shape and the name (varints and
// bytes), zero-padded.
constexpr size_t kFlagsAt = 0;
constexpr size_t kConflictAt = 4;
constexpr size_t kDescAt = 8;
constexpr size_t kDescBytes = FastRound::kHeaderBytes - kDescAt;
constexpr uint32_t kMore = 1;
constexpr uint32_t kNotWaiting = 2;  // see Outcome
constexpr uint32_t kMoved = 4;

uint32_t LoadU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

void StoreU32(char* p, uint32_t v) { std::memcpy(p, &v, sizeof(v)); }

// `out` holds kDescBytes zeros on entry. False if the description does not fit.
bool Describe(const Request& r, char* out) {
  const int64_t bytes = InputBytes(r);
  if (bytes <= 0 || bytes > INT32_MAX) return false;
  out[0] = 1;
  out[1] = static_cast<char>(r.dtype);
  out[2] = r.average ? 1 : 0;
  StoreU32(out + 4, static_cast<uint32_t>(bytes));
  thread_local std::string rest;  // reused: no allocation per op
  rest.clear();
  ByteWriter w(&rest);
  w.Varint(r.shape.size());
  for (int64_t d : r.shape) w.Varint(static_cast<uint64_t>(d));
  w.Str(r.name);
  if (rest.size() > kDescBytes - 8) return false;
  std::memcpy(out + 8, rest.data(), rest.size());
  return true;
}

}  // namespace

void FastRound::Reset() {
  active_ = false;
  last_worthy_ = 0;
  capacity_ = 0;
}

bool FastRound::Fits(const Request& r) {
  if (r.op != OpType::ALLREDUCE || !TravelsInline(r)) return false;
  if (r.int_arg != 0) return false;  // a grouped allreduce's member: its group size must be compared
  if (r.average && !IsFloatingPoint(r.dtype)) return false;  // invalid: the full exchange reports it
  char desc[kDescBytes] = {};
  return Describe(r, desc);
}

bool FastRound::Eligible(const Request& r) const {
  const int64_t bytes = InputBytes(r);
  return r.rejected.empty() && bytes > 0 && bytes <= capacity_ && Fits(r);
}

void FastRound::Build(const Request* offer, std::string_view input, bool more, bool waiting, bool moved,
                      std::vector<char>* buf) const {
  buf->resize(kHeaderBytes + static_cast<size_t>(capacity_));
  char* p = buf->data();
  std::memset(p, 0, kHeaderBytes);
  StoreU32(p + kFlagsAt, (more ? kMore : 0) | (waiting ? 0 : kNotWaiting) | (moved ? kMoved : 0));
  if (offer && Describe(*offer, p + kDescAt)) std::memcpy(p + kHeaderBytes, input.data(), input.size());
  else std::memset(p + kDescAt, 0, kDescBytes);
}

FastRound::Outcome FastRound::Read(const std::vector<char>& buf) {
  Outcome o;
  const char* p = buf.data();
  const bool conflict = LoadU32(p + kConflictAt) != 0;
  const bool offered = p[kDescAt] == 1;
  o.agreed = !conflict && offered;
  const uint32_t flags = LoadU32(p + kFlagsAt);
  o.need_full = (flags & kMore) != 0 || conflict;
  o.all_waiting = (flags & kNotWaiting) == 0;
  o.any_moved = (flags & kMoved) != 0;
  if (o.agreed) o.sum = std::string_view(p + kHeaderBytes, LoadU32(p + kDescAt + 4));
  return o;
}

void FastRound::Update(int64_t worthy_bytes) {
  active_ = worthy_bytes > 0 && last_worthy_ > 0;
  // Room for either of the last two ops: a loop alternating two sizes offers
  // each of them.
  if (active_) capacity_ = std::max(worthy_bytes, last_worthy_);
  last_worthy_ = worthy_bytes;
}

void FastRound::Reduce(const char* a, char* b, size_t size) {
  StoreU32(b + kFlagsAt, LoadU32(b + kFlagsAt) | LoadU32(a + kFlagsAt));
  uint32_t conflict = LoadU32(b + kConflictAt) | LoadU32(a + kConflictAt);
  if (std::memcmp(a + kDescAt, b + kDescAt, kDescBytes) != 0) conflict = 1;
  const uint32_t bytes = LoadU32(b + kDescAt + 4);
  if (!conflict && b[kDescAt] == 1) {
    const auto dtype = static_cast<DataType>(static_cast<uint8_t>(b[kDescAt + 1]));
    if (kHeaderBytes + bytes > size) {
      conflict = 1;  // cannot happen: every rank sized its message alike
    } else {
      SumInto(dtype, b + kHeaderBytes, a + kHeaderBytes, bytes / DataTypeSize(dtype));
    }
  }
  StoreU32(b + kConflictAt, conflict);
}

}  // namespace bluefog
