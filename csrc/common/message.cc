#include "message.h"

#include <algorithm>

#include "wire.h"

namespace bluefog {

namespace {
bool CarriesNeighbors(OpType op) {
  return op == OpType::NEIGHBOR_ALLREDUCE || op == OpType::NEIGHBOR_ALLGATHER || op == OpType::WIN_CREATE;
}
constexpr uint8_t kFlagAverage = 1;
constexpr uint8_t kFlagHierarchical = 2;
constexpr uint8_t kFlagPayload = 4;
constexpr uint8_t kFlagRejected = 8;
constexpr uint8_t kFlagTopoCheck = 16;
}  // namespace

void EncodeCycleMessage(const CycleMessage& msg, std::string* out) {
  ByteWriter w(out);
  w.U8((msg.shutdown ? 1 : 0) | (msg.waiting ? 2 : 0) | (msg.moved ? 4 : 0));
  w.Varint(msg.requests.size());
  for (const auto& r : msg.requests) {
    w.Str(r.name);
    w.U8(static_cast<uint8_t>(r.op));
    w.U8(static_cast<uint8_t>(r.dtype));
    w.Varint(r.shape.size());
    for (auto d : r.shape) w.SVarint(d);
    w.SVarint(r.root_rank);
    w.U8((r.average ? kFlagAverage : 0) | (r.hierarchical_local ? kFlagHierarchical : 0) |
         (r.has_payload ? kFlagPayload : 0) | (r.rejected.empty() ? 0 : kFlagRejected) |
         (r.topo_check ? kFlagTopoCheck : 0));
    if (!r.rejected.empty()) w.Str(r.rejected);
    w.SVarint(r.device);
    w.SVarint(r.int_arg);
    if (CarriesNeighbors(r.op)) {
      w.Varint(r.src_ranks.size());
      for (auto v : r.src_ranks) w.Varint(static_cast<uint64_t>(v));
      w.Varint(r.dst_ranks.size());
      for (auto v : r.dst_ranks) w.Varint(static_cast<uint64_t>(v));
      w.Varint(r.dst_weights.size());
      for (auto v : r.dst_weights) w.F64(v);
    }
    if (r.has_payload) w.Bytes(r.Payload());
  }
  w.Varint(msg.timed_out.size());
  for (const auto& name : msg.timed_out) w.Str(name);
  w.Varint(msg.deadlocked.size());
  for (const auto& name : msg.deadlocked) w.Str(name);
}

bool DecodeCycleMessage(const char* data, size_t size, CycleMessage* msg) {
  ByteReader rd(data, size);
  const uint8_t flags = rd.U8();
  msg->shutdown = (flags & 1) != 0;
  msg->waiting = (flags & 2) != 0;
  msg->moved = (flags & 4) != 0;
  uint64_t n = rd.Varint();
  msg->requests.clear();
  // Reserved up front (bounded by the bytes left: every item takes one or more).
  msg->requests.reserve(std::min<uint64_t>(n, rd.remaining()));
  for (uint64_t i = 0; i < n && rd.ok(); ++i) {
    Request r;
    r.name = rd.Str();
    r.op = static_cast<OpType>(rd.U8());
    r.dtype = static_cast<DataType>(rd.U8());
    uint64_t ndim = rd.Varint();
    if (ndim > 64) return false;
    r.shape.resize(ndim);
    for (auto& d : r.shape) d = rd.SVarint();
    r.root_rank = static_cast<int32_t>(rd.SVarint());
    uint8_t flags = rd.U8();
    r.average = flags & kFlagAverage;
    r.hierarchical_local = flags & kFlagHierarchical;
    r.has_payload = flags & kFlagPayload;
    r.topo_check = flags & kFlagTopoCheck;
    if (flags & kFlagRejected) {
      r.rejected = rd.Str();
      if (r.rejected.empty()) return false;
    }
    r.device = static_cast<int32_t>(rd.SVarint());
    r.int_arg = rd.SVarint();
    if (CarriesNeighbors(r.op)) {
      uint64_t n_src = rd.Varint();
      r.src_ranks.reserve(std::min<uint64_t>(n_src, rd.remaining()));
      for (uint64_t k = 0; k < n_src && rd.ok(); ++k) r.src_ranks.push_back(static_cast<int32_t>(rd.Varint()));
      uint64_t n_dst = rd.Varint();
      r.dst_ranks.reserve(std::min<uint64_t>(n_dst, rd.remaining()));
      for (uint64_t k = 0; k < n_dst && rd.ok(); ++k) r.dst_ranks.push_back(static_cast<int32_t>(rd.Varint()));
      uint64_t n_w = rd.Varint();
      r.dst_weights.reserve(std::min<uint64_t>(n_w, rd.remaining()));
      for (uint64_t k = 0; k < n_w && rd.ok(); ++k) r.dst_weights.push_back(rd.F64());
    }
    if (r.has_payload) r.payload_view = rd.View();  // into `data`: see Request::Own
    msg->requests.push_back(std::move(r));
  }
  uint64_t t = rd.Varint();
  msg->timed_out.clear();
  for (uint64_t i = 0; i < t && rd.ok(); ++i) msg->timed_out.push_back(rd.Str());
  uint64_t d = rd.Varint();
  msg->deadlocked.clear();
  for (uint64_t i = 0; i < d && rd.ok(); ++i) msg->deadlocked.push_back(rd.Str());
  return rd.ok() && rd.done();
}

}  // namespace bluefog
