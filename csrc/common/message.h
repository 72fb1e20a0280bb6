// What a rank tells the others about an op it wants to run (Request), and the
// agreed decision every rank computes from all ranks' requests (Response).
#ifndef BLUEFOG_COMMON_MESSAGE_H
#define BLUEFOG_COMMON_MESSAGE_H

#include <string>
#include <string_view>
#include <vector>

#include "common.h"
#include "status.h"

namespace bluefog {

// The internal op names of window creation and freeing: the prefix, then the
// window's name (errors show the window's name alone).
inline const std::string kWinCreatePrefix = "bluefog.win_create.";
inline const std::string kWinFreePrefix = "bluefog.win_free.";

struct Request {
  std::string name;
  OpType op = OpType::ALLREDUCE;
  DataType dtype = DataType::FLOAT32;
  Shape shape;
  int32_t root_rank = -1;      // broadcast
  bool average = false;        // allreduce
  bool hierarchical_local = false;
  int32_t device = kCpuDevice;
  int64_t int_arg = 0;         // control ops (e.g. skip-negotiate value)
  // Neighbor ops: enable_topo_check. Negotiation checks every pattern and
  // ignores it; skip-negotiate mode checks the pattern only with it, so there
  // the ranks must agree on it (SkipModeDigest).
  bool topo_check = false;
  // Neighbor ops: who this rank receives from and sends to (world ranks), and
  // the weight each sent copy is scaled by (empty: all 1).
  std::vector<int32_t> src_ranks;
  std::vector<int32_t> dst_ranks;
  std::vector<double> dst_weights;
  // Non-empty: this rank's frontend refused the op (bad input here) and says
  // why; every rank's op of this name then fails with it (nobody waits for a
  // rank that will never run it). Nothing else in the request is meaningful.
  std::string rejected;
  // Small allreduce / neighbor_allreduce ops: the input's bytes travel inside
  // the negotiation exchange itself (see BLUEFOG_INLINE_BYTES). When every
  // rank's request carries them, each rank computes the result locally from
  // the same bytes, and the op needs no second collective.
  bool has_payload = false;
  // The bytes are either owned here, or (payload_view non-empty) they are in a
  // buffer that outlives this exchange's use of them: the sender's input
  // tensor while it encodes, the exchange's receive buffer while the round's
  // ops run. Own() copies a viewed payload in (a request kept across rounds).
  std::string payload;
  std::string_view payload_view;
  std::string_view Payload() const { return payload_view.data() ? payload_view : std::string_view(payload); }
  void Own() {
    if (!payload_view.data()) return;
    payload.assign(payload_view.data(), payload_view.size());
    payload_view = {};
  }
};

// The size of the request's input tensor in bytes.
inline int64_t InputBytes(const Request& r) {
  return NumElements(r.shape) * static_cast<int64_t>(DataTypeSize(r.dtype));
}

// One cycle's message of a rank: flags plus its newly enqueued requests.
struct CycleMessage {
  bool shutdown = false;  // this rank has asked to shut down
  bool waiting = false;   // a thread of this rank is blocked in a BlueFog wait
  bool moved = false;     // this rank completed direct (window) ops since its last message
  std::vector<Request> requests;
  // Ops this rank (their stall reporter) declares timed out: all ranks fail them.
  std::vector<std::string> timed_out;
  // Likewise, ops it found deadlocked (Coordinator::Stalls).
  std::vector<std::string> deadlocked;
};

void EncodeCycleMessage(const CycleMessage& msg, std::string* out);
bool DecodeCycleMessage(const char* data, size_t size, CycleMessage* msg);

// The agreed decision: run these names (fused if several) or fail them.
struct Response {
  OpType op = OpType::ALLREDUCE;
  std::vector<std::string> names;
  std::string error;  // non-empty: every listed op fails with this message
  bool error_is_abort = false;  // peer gone / stalled (vs. invalid or mismatched input)
  // >= 0: the error is for this rank's op only (a grouped allreduce's member
  // that only some ranks submitted: another rank may already have moved on
  // and submitted an op of the same name again).
  int32_t only_rank = -1;
  // ALLGATHER: first dimension of each rank's tensor, per name (names x size).
  std::vector<std::vector<int64_t>> first_dims;
  // WIN_CREATE: every rank's source (in-neighbor) list, index = rank.
  std::vector<std::vector<int32_t>> all_src_ranks;
  // Inline op (every rank's request carried its input): every rank's request,
  // index = rank, payload included. Empty for ops that run through MPI.
  std::vector<Request> inline_by_rank;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_MESSAGE_H
