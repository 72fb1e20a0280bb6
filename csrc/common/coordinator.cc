#include "coordinator.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "inline_ops.h"
#include "wire.h"

namespace bluefog {

namespace {

// Groups ranks by the text `value_of` gives; "" if all agree, else a sentence.
template <typename F>
std::string Disagreement(const std::vector<Request>& by_rank, const char* field, F value_of) {
  std::vector<std::string> values;
  values.reserve(by_rank.size());
  for (const Request& r : by_rank) values.push_back(value_of(r));
  return DisagreementText(values, field);
}

std::string TrailingShape(const Request& r) {
  if (r.shape.empty()) return "[] (scalar, gathered as [1])";
  Shape rest(r.shape.begin() + 1, r.shape.end());
  return std::to_string(r.shape.size()) + " dims, trailing " + ShapeString(rest);
}

bool Contains(const std::vector<int32_t>& v, int32_t x) {
  for (auto y : v)
    if (y == x) return true;
  return false;
}

bool IsNeighborOp(OpType op) {
  return op == OpType::NEIGHBOR_ALLREDUCE || op == OpType::NEIGHBOR_ALLGATHER || op == OpType::WIN_CREATE;
}

// Grouped allreduce members carry their group's size in int_arg (0: not grouped).
std::string GroupSizeDisagreement(const std::vector<Request>& v) {
  return Disagreement(v, "the number of tensors in the grouped allreduce", [](const Request& r) {
    return r.int_arg > 0 ? std::to_string(r.int_arg) : std::string("none (a plain allreduce)");
  });
}

}  // namespace

namespace {
// What is wrong with rank `r`'s own lists in a world of `size` ranks, appended
// to `problems` (nothing if they are valid).
void ListProblems(const Request& q, int r, int size, std::vector<std::string>* problems) {
  for (const auto* list : {&q.src_ranks, &q.dst_ranks}) {
    const char* what = list == &q.src_ranks ? "source" : "destination";
    for (size_t i = 0; i < list->size(); ++i) {
      int32_t x = (*list)[i];
      if (x < 0 || x >= size || x == r) {
        problems->push_back("rank " + std::to_string(r) + " lists " + what + " rank " + std::to_string(x) +
                            " (expected a rank in [0, " + std::to_string(size) + ") other than itself)");
      } else if (std::find(list->begin(), list->begin() + i, x) != list->begin() + i) {
        problems->push_back("rank " + std::to_string(r) + " lists " + what + " rank " + std::to_string(x) + " twice");
      }
    }
  }
  if (!q.dst_weights.empty() && q.dst_weights.size() != q.dst_ranks.size()) {
    problems->push_back("rank " + std::to_string(r) + " gives " + std::to_string(q.dst_weights.size()) +
                        " weights for " + std::to_string(q.dst_ranks.size()) + " destinations");
  }
}
}  // namespace

// Every rank's send/receive lists must be valid and mirror each other, or the
// exchange would deadlock or drop data.
std::string CheckPattern(const std::vector<Request>& v) {
  const int size = static_cast<int>(v.size());
  std::vector<std::string> problems;
  for (int r = 0; r < size; ++r) ListProblems(v[r], r, size, &problems);
  if (problems.empty()) {
    for (int r = 0; r < size; ++r) {
      for (int32_t d : v[r].dst_ranks)
        if (!Contains(v[d].src_ranks, r))
          problems.push_back("rank " + std::to_string(r) + " sends to rank " + std::to_string(d) + ", but rank " +
                             std::to_string(d) + " does not receive from rank " + std::to_string(r));
      for (int32_t src : v[r].src_ranks)
        if (!Contains(v[src].dst_ranks, r))
          problems.push_back("rank " + std::to_string(r) + " receives from rank " + std::to_string(src) +
                             ", but rank " + std::to_string(src) + " does not send to rank " + std::to_string(r));
    }
  }
  if (problems.empty()) return "";
  std::string out = "send/receive pattern mismatch: ";
  const size_t shown = std::min<size_t>(problems.size(), 6);
  for (size_t i = 0; i < shown; ++i) out += (i ? "; " : "") + problems[i];
  if (problems.size() > shown) out += "; and " + std::to_string(problems.size() - shown) + " more";
  return out;
}

namespace {

// Ops with equal keys can share one message: same kind, dtype, flags, device
// and (for neighbor ops) the same send/receive lists and weights on EVERY rank.
// (Compared for equality only: a few bytes, which for allreduce fit in the
// string itself without a heap allocation.)
std::string FusionKey(const Request* by_rank, size_t n) {
  const Request& r = by_rank[0];
  std::string key;
  if (r.op == OpType::NEIGHBOR_ALLREDUCE) key.reserve(8 + 32 * n);
  ByteWriter w(&key);
  w.U8(static_cast<uint8_t>(r.op));
  w.U8(static_cast<uint8_t>(r.dtype));
  w.U8((r.average ? 1 : 0) | (r.hierarchical_local ? 2 : 0));
  w.SVarint(r.device);
  if (r.op != OpType::NEIGHBOR_ALLREDUCE) return key;
  for (size_t i = 0; i < n; ++i) {
    const Request& q = by_rank[i];
    w.Varint(q.src_ranks.size());
    for (auto v : q.src_ranks) w.Varint(static_cast<uint64_t>(v));
    w.Varint(q.dst_ranks.size());
    for (auto v : q.dst_ranks) w.Varint(static_cast<uint64_t>(v));
    w.Varint(q.dst_weights.size());
    for (auto v : q.dst_weights) w.F64(v);
  }
  return key;
}

// Window lifecycle ops are negotiated under the core's own names
// ('bluefog.win_create.<name>'): the window's name and the op it is for.
struct WindowOpName {
  const std::string* prefix;
  const char* op;
};
const WindowOpName kWindowOpNames[] = {{&kWinCreatePrefix, "win_create"}, {&kWinFreePrefix, "win_free"}};

}  // namespace

std::string ShownName(const std::string& name, bool with_op) {
  for (const auto& w : kWindowOpNames) {
    if (name.rfind(*w.prefix, 0) == 0) {
      return (with_op ? std::string(w.op) + " '" : "'") + name.substr(w.prefix->size()) + "'";
    }
  }
  return "'" + name + "'";
}

namespace {
// An op's error message: "bluefog <op> '<name>': <why>".
std::string OpError(const Request& r, const std::string& why) {
  return "bluefog " + std::string(OpTypeName(r.op)) + " " + ShownName(r.name, false) + ": " + why;
}
}  // namespace

void Coordinator::Reset(int size) {
  size_ = size;
  table_.clear();
  orphans_.clear();
  shutdown_.assign(size, false);
  waiting_.assign(size, false);
  last_progress_ = Clock::now();
  ready_.clear();
}

Response Coordinator::Error(const Request& r, std::string message) {
  Response resp;
  resp.op = r.op;
  resp.names = {r.name};
  resp.error = OpError(r, message);
  return resp;
}

// The fields CheckAgreement compares, compared directly (the usual case: all
// ranks agree, and no text needs to be built).
bool SameDescription(const Request& a, const Request& b) {
  if (a.op != b.op || a.dtype != b.dtype || a.device != b.device || a.root_rank != b.root_rank ||
      a.average != b.average || a.hierarchical_local != b.hierarchical_local || a.int_arg != b.int_arg) {
    return false;
  }
  if (a.op == OpType::ALLGATHER || a.op == OpType::NEIGHBOR_ALLGATHER) {  // dim 0 may differ
    return a.shape.size() == b.shape.size() && (a.shape.empty() || std::equal(a.shape.begin() + 1, a.shape.end(),
                                                                              b.shape.begin() + 1));
  }
  return a.shape == b.shape;
}

std::string CheckAgreement(const std::vector<Request>& v, int size) {
  std::string refused;  // the ranks whose frontend refused the op, and why
  for (int r = 0; r < static_cast<int>(v.size()); ++r) {
    if (v[r].rejected.empty()) continue;
    refused += (refused.empty() ? "refused on rank " : "; on rank ") + std::to_string(r) + ": " + v[r].rejected;
  }
  if (!refused.empty()) return refused + " (it ran on no rank)";
  bool same = true;
  for (size_t r = 1; r < v.size() && same; ++r) same = SameDescription(v[0], v[r]);
  const OpType op = v[0].op;
  std::string d;
  if (!same) {  // find the first field that differs, and say who has what
    d = Disagreement(v, "the op", [](const Request& r) { return std::string(OpTypeName(r.op)); });
    if (d.empty()) d = Disagreement(v, "dtype", [](const Request& r) { return std::string(DataTypeName(r.dtype)); });
    if (d.empty())
      d = Disagreement(v, "device", [](const Request& r) {
        return r.device == kCpuDevice ? std::string("cpu") : "gpu " + std::to_string(r.device);
      });
    if (d.empty()) {
      if (op == OpType::ALLGATHER || op == OpType::NEIGHBOR_ALLGATHER) d = Disagreement(v, "shape", TrailingShape);
      else d = Disagreement(v, "shape", [](const Request& r) { return ShapeString(r.shape); });
    }
    if (d.empty() && op == OpType::BROADCAST)
      d = Disagreement(v, "root_rank", [](const Request& r) { return std::to_string(r.root_rank); });
    if (d.empty() && op == OpType::ALLREDUCE) {
      d = Disagreement(v, "average", [](const Request& r) { return std::string(r.average ? "True" : "False"); });
      if (d.empty())
        d = Disagreement(v, "is_hierarchical_local",
                         [](const Request& r) { return std::string(r.hierarchical_local ? "True" : "False"); });
      if (d.empty()) d = GroupSizeDisagreement(v);
    }
    if (d.empty() && op == OpType::SET_SKIP_NEGOTIATE)
      d = Disagreement(v, "the value", [](const Request& r) { return std::string(r.int_arg ? "True" : "False"); });
  }
  if (d.empty() && IsNeighborOp(op)) d = CheckPattern(v);
  if (!d.empty()) return d;
  return CheckValid(v[0], size);
}

std::string CheckValid(const Request& r, int size) {
  const OpType op = r.op;
  if (op == OpType::BROADCAST && (r.root_rank < 0 || r.root_rank >= size)) {
    return "root_rank " + std::to_string(r.root_rank) + " is out of range: expected 0 <= root_rank < " +
           std::to_string(size);
  }
  if (op == OpType::ALLREDUCE && r.dtype == DataType::BOOL) {
    return "dtype bool cannot be summed; expected an integer or floating-point tensor";
  }
  if (op == OpType::WIN_CREATE && r.dtype != DataType::INT32 && r.dtype != DataType::INT64 &&
      r.dtype != DataType::FLOAT32 && r.dtype != DataType::FLOAT64) {
    return std::string("windows support int32, int64, float32 and float64, got ") + DataTypeName(r.dtype);
  }
  if (op == OpType::NEIGHBOR_ALLREDUCE && !IsFloatingPoint(r.dtype)) {
    return std::string("needs a floating-point tensor (float16, bfloat16, float32, float64), got ") +
           DataTypeName(r.dtype);
  }
  if (op == OpType::ALLREDUCE && r.average && !IsFloatingPoint(r.dtype)) {
    return std::string("average=True needs a floating-point tensor, got ") + DataTypeName(r.dtype) +
           "; use average=False for a sum";
  }
  return "";
}

namespace {
// FNV-1a, 64-bit.
void Mix(uint64_t* h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) *h = (*h ^ p[i]) * 1099511628211ull;
}
template <typename T>
void MixValue(uint64_t* h, T v) {
  Mix(h, &v, sizeof(v));
}
}  // namespace

uint64_t SkipModeDigest(const Request& r) {
  uint64_t h = 14695981039346656037ull;
  MixValue(&h, static_cast<int32_t>(r.op));
  MixValue(&h, r.name.size());
  Mix(&h, r.name.data(), r.name.size());
  MixValue(&h, static_cast<int32_t>(r.dtype));
  MixValue(&h, r.device);
  MixValue(&h, r.root_rank);
  MixValue(&h, static_cast<int32_t>(r.average) * 2 + static_cast<int32_t>(r.hierarchical_local));
  MixValue(&h, r.op == OpType::WIN_CREATE ? 0 : r.int_arg);  // (zero_init is each rank's own choice)
  MixValue(&h, r.topo_check);
  MixValue(&h, r.shape.size());
  const bool gather = r.op == OpType::ALLGATHER || r.op == OpType::NEIGHBOR_ALLGATHER;  // dim 0 may differ
  for (size_t i = gather ? 1 : 0; i < r.shape.size(); ++i) MixValue(&h, r.shape[i]);
  return h;
}

std::string SkipModeInvalid(const Request& r, int size) {
  const std::string why = CheckValid(r, size);
  return why.empty() ? why : OpError(r, why);
}

int PatternWords(int size, int64_t max_ranks) {
  if (size < 1 || size > max_ranks) return 0;
  return 1 + 2 * ((size * size + 63) / 64);
}

namespace {
void ClearBit(uint64_t* bits, int index) { bits[index / 64] &= ~(uint64_t{1} << (index % 64)); }
bool TestBit(const uint64_t* bits, int index) { return (bits[index / 64] >> (index % 64)) & 1; }
}  // namespace

bool HasPatternToCheck(const Request& r) {
  return r.topo_check && (r.op == OpType::NEIGHBOR_ALLREDUCE || r.op == OpType::NEIGHBOR_ALLGATHER);
}

void FillPatternWords(const Request& r, int rank, int size, int n, uint64_t* words) {
  std::fill(words, words + n, ~uint64_t{0});
  if (n == 0 || !HasPatternToCheck(r)) return;
  std::vector<std::string> problems;  // (CheckPattern's own validity rules: these lists do not fit the matrices)
  ListProblems(r, rank, size, &problems);
  if (!problems.empty()) {
    words[0] = 0;
    return;
  }
  const int matrix = (n - 1) / 2;
  uint64_t* sends = words + 1;          // bit s*size+d: rank s sends to d
  uint64_t* recvs = words + 1 + matrix;  // bit d*size+s: rank d receives from s
  std::vector<bool> dst(size, false), src(size, false);
  for (int32_t d : r.dst_ranks) dst[d] = true;
  for (int32_t s : r.src_ranks) src[s] = true;
  for (int x = 0; x < size; ++x) {
    if (!dst[x]) ClearBit(sends, rank * size + x);
    if (!src[x]) ClearBit(recvs, rank * size + x);
  }
}

bool PatternFromWords(const uint64_t* words, int n, int size, std::string* problem) {
  if (n == 0 || words[0] != ~uint64_t{0}) return false;
  const int matrix = (n - 1) / 2;
  std::vector<Request> by_rank(size);
  for (int r = 0; r < size; ++r) {
    for (int x = 0; x < size; ++x) {
      if (TestBit(words + 1, r * size + x)) by_rank[r].dst_ranks.push_back(x);
      if (TestBit(words + 1 + matrix, r * size + x)) by_rank[r].src_ranks.push_back(x);
    }
  }
  *problem = CheckPattern(by_rank);
  return true;
}

int SkipModeFusiblePrefix(const std::vector<Request>& queue, size_t start, int most, int64_t threshold) {
  const Request& first = queue[start];
  const auto fusible = [&first](const Request& r) {
    return r.rejected.empty() && r.op == first.op && r.topo_check == first.topo_check &&
           (r.op == OpType::NEIGHBOR_ALLREDUCE || (r.op == OpType::ALLREDUCE && r.int_arg == 0));
  };
  if (!fusible(first)) return 1;
  const std::string key = FusionKey(&first, 1);
  int64_t bytes = InputBytes(first);
  int n = 1;
  for (size_t i = start + 1; i < queue.size() && n < most; ++i, ++n) {
    const Request& r = queue[i];
    bytes += InputBytes(r);
    if (!fusible(r) || bytes > threshold || FusionKey(&r, 1) != key) break;
  }
  return n;
}

uint64_t SkipModePrefixDigest(const std::vector<Request>& queue, size_t start, int n) {
  uint64_t h = 14695981039346656037ull;
  for (int i = 0; i < n; ++i) MixValue(&h, SkipModeDigest(queue[start + i]));
  return h;
}

std::string SkipModeDisagreement(const std::vector<Request>& by_rank, int my_rank) {
  const Request& mine = by_rank[my_rank];
  std::string why = CheckAgreement(by_rank, static_cast<int>(by_rank.size()));
  if (why.empty()) {
    why = Disagreement(by_rank, "enable_topo_check",
                       [](const Request& r) { return std::string(r.topo_check ? "True" : "False"); });
  }
  if (!why.empty()) {
    why += " (skip-negotiate mode)";
  } else {  // the same description: the names differ
    std::vector<std::string> ops;
    for (const Request& r : by_rank) ops.push_back(OpTypeName(r.op) + (" " + ShownName(r.name, false)));
    why = DisagreementText(ops, "the op to run next");
    if (why.empty()) why = "ranks disagree on this op's settings";  // (not expected: every digested field is compared)
    why += " (in skip-negotiate mode every rank runs its ops in the order it submitted them: the ranks must "
           "submit the same ops, under the same names, in the same order)";
  }
  return OpError(mine, why);
}

void Coordinator::Ingest(std::vector<CycleMessage>& messages, Clock::time_point now,
                         std::vector<Response>* out) {
  ready_.clear();
  viewed_.clear();
  completed_.clear();
  const size_t decided_before = out->size();
  bool moved = false;
  for (int rank = 0; rank < static_cast<int>(messages.size()); ++rank) {
    CycleMessage& msg = messages[rank];
    moved = moved || msg.moved || !msg.requests.empty() || (msg.shutdown && !shutdown_[rank]);
    if (msg.shutdown) shutdown_[rank] = true;
    waiting_[rank] = msg.waiting;
    for (Request& incoming : msg.requests) {
      if (!orphans_.empty()) {
        auto o = orphans_.find(incoming.name);
        if (o != orphans_.end() && o->second.expected[rank]) {
          out->push_back(Error(incoming, o->second.why));
          out->back().only_rank = rank;
          o->second.expected[rank] = false;
          if (std::find(o->second.expected.begin(), o->second.expected.end(), true) == o->second.expected.end())
            orphans_.erase(o);
          continue;
        }
      }
      auto it = table_.find(incoming.name);
      if (it == table_.end()) {
        Pending p;
        p.by_rank.resize(size_);
        p.submitted.assign(size_, false);
        p.first_seen = now;
        p.last_warned = now;
        it = table_.emplace(incoming.name, std::move(p)).first;
      }
      Pending& p = it->second;
      if (!p.submitted[rank]) ++p.count;
      p.submitted[rank] = true;
      p.by_rank[rank] = std::move(incoming);
      if (p.count < size_) {
        if (p.by_rank[rank].payload_view.data()) viewed_.push_back(it);
        continue;
      }
      const Request& req = p.by_rank[rank];

      std::string problem = CheckAgreement(p.by_rank, size_);
      Response resp;
      if (!problem.empty()) {
        resp = Error(p.by_rank[0], problem);
        if (req.op == OpType::ALLREDUCE) FailGroupExtras(p, out);
      } else {
        resp.op = req.op;
        resp.names = {req.name};
        if (req.op == OpType::ALLGATHER || req.op == OpType::NEIGHBOR_ALLGATHER) {
          std::vector<int64_t> dims(size_);
          for (int r = 0; r < size_; ++r) dims[r] = p.by_rank[r].shape.empty() ? 1 : p.by_rank[r].shape[0];
          resp.first_dims.push_back(std::move(dims));
        }
        if (req.op == OpType::WIN_CREATE) {
          for (int r = 0; r < size_; ++r) resp.all_src_ranks.push_back(p.by_rank[r].src_ranks);
        }
        if (CompletesInline(p.by_rank)) {
          resp.inline_by_rank = std::move(p.by_rank);  // not fused: its data has already travelled
        } else {
          ready_[req.name] = ReadyInfo{InputBytes(req),
                                       FusionKey(p.by_rank.data(), p.by_rank.size())};
        }
      }
      out->push_back(std::move(resp));
      completed_.push_back(it);  // erased below (viewed_ may point at it)
    }
  }
  // Payloads that arrived this round for ops still waiting for other ranks
  // point into this round's receive buffer: copy them in before it is reused.
  for (auto it : viewed_) {
    if (it->second.count < size_) {
      for (Request& r : it->second.by_rank) r.Own();
    }
  }
  for (auto it : completed_) table_.erase(it);
  // A deadlock declared (by rank 0, from an earlier round) still holds only
  // if this round shows it too: every rank blocked in a wait (or shut down),
  // no request, nothing moved. Decided from the messages alone, so the same
  // on every rank.
  const bool still_stuck = !moved && out->size() == decided_before && AllBlocked();
  // Every message first (an error names the other ranks' pending ops), then
  // the failed ops leave the table.
  std::vector<std::map<std::string, Pending>::iterator> failed;
  std::vector<std::string> pending;  // PendingByRank(), once a deadlock error needs it
  auto fail = [&](const std::vector<std::string>& names, bool deadlock) {
    for (const std::string& name : names) {
      auto it = table_.find(name);
      // (Ready in this very cycle, or failed by another message.)
      if (it == table_.end() || std::find(failed.begin(), failed.end(), it) != failed.end()) continue;
      if (deadlock && pending.empty()) pending = PendingByRank();
      out->push_back(StalledError(it->second, now, deadlock, pending));
      failed.push_back(it);
    }
  };
  for (const CycleMessage& msg : messages) {
    fail(msg.timed_out, false);
    if (still_stuck) fail(msg.deadlocked, true);
  }
  for (auto it : failed) table_.erase(it);
  FailMissingShutdown(out);
  if (moved || out->size() > decided_before) last_progress_ = now;
}

std::vector<std::string> Coordinator::PendingByRank() const {
  constexpr int kMost = 3;
  std::vector<std::string> text(size_);
  std::vector<int> n(size_, 0);
  for (const auto& kv : table_) {
    for (int r = 0; r < size_; ++r) {
      if (kv.second.submitted[r] && n[r]++ < kMost) text[r] += (text[r].empty() ? "" : ", ") + ShownName(kv.first, true);
    }
  }
  for (int r = 0; r < size_; ++r)
    if (n[r] > kMost) text[r] += " and " + std::to_string(n[r] - kMost) + " more";
  return text;
}

Response Coordinator::StalledError(const Pending& p, Clock::time_point now, bool deadlock,
                                   const std::vector<std::string>& pending) const {
  std::vector<int> submitted, missing;
  for (int r = 0; r < size_; ++r) (p.submitted[r] ? submitted : missing).push_back(r);
  const int secs = static_cast<int>(std::chrono::duration<double>(now - p.first_seen).count());
  const Request& any = p.by_rank[submitted.empty() ? 0 : submitted[0]];
  std::ostringstream os;
  if (!deadlock) {
    os << "stalled: submitted by " << RankList(submitted) << " but never by " << RankList(missing)
       << " within the stall shutdown time (waited about " << secs << " s)";
  } else {
    // (As this rank saw it: rank 0 declared the deadlock once its own count
    // reached the stall check time, a little earlier or later than here.)
    const double quiet = std::chrono::duration<double>(now - last_progress_).count();
    os << "deadlocked: submitted by " << RankList(submitted) << " but not by " << RankList(missing)
       << ", and for " << std::fixed << std::setprecision(1) << quiet << " s every rank has been blocked waiting for BlueFog ops with nothing "
       << "submitted or completed anywhere, so it can never complete";
    std::string instead;
    for (int r : missing) {  // (what a rank that lacks this op has pending is never this op)
      if (!pending[r].empty()) instead += (instead.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": " + pending[r]);
    }
    if (!instead.empty()) os << " (pending instead on " << instead << ")";
    os << ". Every rank must submit each op, under the same name (check names built from per-rank values, "
       << "and loops that run a different number of times on different ranks)";
  }
  Response resp = Error(any, os.str());
  resp.error_is_abort = true;
  return resp;
}

// A grouped allreduce's first member ('<group>.0') whose ranks disagree on the
// group's size: the members that only ranks with more tensors submit
// ('<group>.<j>', j >= the smallest size) would wait forever for the others.
// They fail too, now if already submitted, else when they arrive.
void Coordinator::FailGroupExtras(const Pending& first, std::vector<Response>* out) {
  const std::string& name = first.by_rank[0].name;
  if (name.size() < 2 || name.compare(name.size() - 2, 2, ".0") != 0) return;
  for (const Request& r : first.by_rank)
    if (!r.rejected.empty()) return;  // a refusing frontend refuses every member itself
  const std::string why = GroupSizeDisagreement(first.by_rank);
  if (why.empty()) return;
  int64_t smallest = INT64_MAX, largest = 0;
  for (const Request& r : first.by_rank) {
    smallest = std::min(smallest, r.int_arg);
    largest = std::max(largest, r.int_arg);
  }
  const std::string group = name.substr(0, name.size() - 2);
  for (int64_t j = std::max<int64_t>(smallest, 1); j < largest; ++j) {
    const std::string member = group + "." + std::to_string(j);
    Orphan o;
    o.why = why + " (tensor " + std::to_string(j) + " of the group exists only on the ranks with more)";
    o.expected.assign(size_, false);
    for (int r = 0; r < size_; ++r) o.expected[r] = first.by_rank[r].int_arg > j;
    auto it = table_.find(member);
    if (it != table_.end()) {
      for (int r = 0; r < size_; ++r) {
        if (!it->second.submitted[r]) continue;
        out->push_back(Error(it->second.by_rank[r], o.why));
        out->back().only_rank = r;
        o.expected[r] = false;
      }
      viewed_.erase(std::remove(viewed_.begin(), viewed_.end(), it), viewed_.end());
      table_.erase(it);  // never in completed_: it never had every rank's request
    }
    if (std::find(o.expected.begin(), o.expected.end(), true) != o.expected.end()) orphans_[member] = std::move(o);
  }
}

void Coordinator::FailMissingShutdown(std::vector<Response>* out) {
  if (!AnyShutdown()) return;
  for (auto it = table_.begin(); it != table_.end();) {
    std::vector<int> gone;
    for (int r = 0; r < size_; ++r)
      if (shutdown_[r] && !it->second.submitted[r]) gone.push_back(r);
    if (gone.empty()) {
      ++it;
      continue;
    }
    int first = 0;
    while (!it->second.submitted[first]) ++first;
    out->push_back(Error(it->second.by_rank[first], RankList(gone) + " shut down (bf.shutdown() or process exit) " +
                                                        "before submitting this op; it can never complete"));
    out->back().error_is_abort = true;
    it = table_.erase(it);
  }
}

void Coordinator::Fuse(std::vector<Response>* responses, int64_t threshold) {
  std::vector<Response>& fused = fused_;
  fused.clear();
  int64_t open_bytes = 0;
  const ReadyInfo* open = nullptr;
  for (auto& r : *responses) {
    const bool fusable = r.op == OpType::ALLREDUCE || r.op == OpType::NEIGHBOR_ALLREDUCE;
    auto it = r.error.empty() && fusable ? ready_.find(r.names[0]) : ready_.end();
    const ReadyInfo* info = it == ready_.end() ? nullptr : &it->second;
    if (info && open && info->fusion_key == open->fusion_key && open_bytes + info->bytes <= threshold) {
      fused.back().names.push_back(r.names[0]);
      open_bytes += info->bytes;
      continue;
    }
    open = info;
    open_bytes = info ? info->bytes : 0;
    fused.push_back(std::move(r));
  }
  responses->swap(fused);
}

std::vector<StallReport> Coordinator::Stalls(Clock::time_point now, double warn_seconds, int my_rank,
                                             bool deadlocks) {
  std::vector<StallReport> reports;
  if (warn_seconds <= 0) return reports;
  auto warn = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warn_seconds));
  const bool stuck = deadlocks && size_ > 1 && now - last_progress_ >= warn && AllBlocked();
  for (auto& kv : table_) {
    Pending& p = kv.second;
    int reporter = 0;
    while (reporter < size_ && !p.submitted[reporter]) ++reporter;
    // A deadlock is declared by rank 0 alone, for every pending op at once
    // (each error then names what the other ranks have pending instead).
    if (stuck ? my_rank != 0 : reporter != my_rank) continue;
    if (now - p.first_seen < warn || (!stuck && now - p.last_warned < warn)) continue;
    p.last_warned = now;
    StallReport rep;
    rep.name = kv.first;
    rep.op = p.by_rank[reporter].op;
    for (int r = 0; r < size_; ++r) (p.submitted[r] ? rep.submitted : rep.missing).push_back(r);
    rep.seconds = std::chrono::duration<double>(now - p.first_seen).count();
    rep.deadlock = stuck;
    reports.push_back(std::move(rep));
  }
  return reports;
}

bool Coordinator::AllBlocked() const {
  for (int r = 0; r < size_; ++r)
    if (!waiting_[r] && !shutdown_[r]) return false;
  return true;
}

bool Coordinator::AllShutdown() const {
  for (bool s : shutdown_)
    if (!s) return false;
  return !shutdown_.empty();
}

bool Coordinator::AnyShutdown() const {
  for (bool s : shutdown_)
    if (s) return true;
  return false;
}

}  // namespace bluefog
