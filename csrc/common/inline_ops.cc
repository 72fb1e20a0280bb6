#include "inline_ops.h"

#include <cstring>
#include <string>

#include "half.h"

namespace bluefog {

bool TravelsInline(const Request& r) {
  const bool op = (r.op == OpType::ALLREDUCE && !r.hierarchical_local) || r.op == OpType::NEIGHBOR_ALLREDUCE;
  return op && r.device == kCpuDevice && r.dtype != DataType::BOOL;
}

bool CompletesInline(const std::vector<Request>& by_rank) {
  const Request& r = by_rank[0];
  if (!TravelsInline(r)) return false;
  const size_t bytes = static_cast<size_t>(InputBytes(r));
  for (const Request& q : by_rank)
    if (!q.has_payload || q.Payload().size() != bytes) return false;
  return true;
}

void AttachPayloads(TensorQueue& queue, int64_t budget_bytes, std::vector<Request>* requests) {
  for (Request& r : *requests) {
    if (!TravelsInline(r)) continue;
    const int64_t bytes = InputBytes(r);
    if (bytes <= 0 || bytes > budget_bytes) continue;
    if (queue.ViewInput(r.name, bytes, &r.payload_view)) {
      r.has_payload = true;
      budget_bytes -= bytes;
    }
  }
}

namespace {

// The factor `sender` scales the copy it sends to `receiver` by.
double WeightFor(const Request& sender, int receiver) {
  if (sender.dst_weights.empty()) return 1.0;
  for (size_t i = 0; i < sender.dst_ranks.size(); ++i)
    if (sender.dst_ranks[i] == receiver) return sender.dst_weights[i];
  return 1.0;
}

Status Internal(const TensorTableEntry& e, const std::string& what) {
  return Status::UnknownError("internal error in inline " + std::string(OpTypeName(e.op)) + " '" + e.name +
                              "': " + what);
}

}  // namespace

Status ComputeInline(const Response& resp, int my_rank, TensorTableEntry& e) {
  const auto& all = resp.inline_by_rank;
  const DataType dtype = all[0].dtype;
  const size_t bytes = all[0].Payload().size();
  const int64_t count = static_cast<int64_t>(bytes / DataTypeSize(dtype));
  if (static_cast<int64_t>(bytes) != e.input->size_bytes()) return Internal(e, "input size changed");

  if (resp.op == OpType::ALLREDUCE) {
    char* out = static_cast<char*>(e.output->data());
    std::memcpy(out, all[0].Payload().data(), bytes);
    for (size_t r = 1; r < all.size(); ++r) SumInto(dtype, out, all[r].Payload().data(), count);
    if (e.average) ScaleBuffer(dtype, out, count, 1.0 / static_cast<double>(all.size()));
    return Status::OK();
  }
  if (resp.op != OpType::NEIGHBOR_ALLREDUCE) return Internal(e, "not an inline op");
  Shape out_shape{static_cast<int64_t>(e.src_ranks.size())};
  out_shape.insert(out_shape.end(), e.input->shape().begin(), e.input->shape().end());
  Status s = e.context->AllocateOutput(out_shape, &e.output);
  if (!s.ok()) return s;
  char* out = static_cast<char*>(e.output->data());
  for (size_t i = 0; i < e.src_ranks.size(); ++i) {
    const Request& from = all.at(static_cast<size_t>(e.src_ranks[i]));
    char* slot = out + bytes * i;
    std::memcpy(slot, from.Payload().data(), bytes);
    const double w = WeightFor(from, my_rank);
    if (w != 1.0) ScaleBuffer(dtype, slot, count, w);  // as the sender scales its copy
  }
  return Status::OK();
}

}  // namespace bluefog
