// Executes agreed ops with MPI. Called only on the core's background thread.
#ifndef BLUEFOG_COMMON_MPI_CONTROLLER_H
#define BLUEFOG_COMMON_MPI_CONTROLLER_H

#include <functional>
#include <string>
#include <vector>

#include "fusion_buffer.h"
#include "message.h"
#include "mpi_context.h"
#include "tensor_queue.h"
#include "timeline.h"

namespace bluefog {

class MpiController {
 public:
  MpiController(MpiContext* mpi, Timeline* timeline);

  // All entries share dtype, average and hierarchical flag; more than one is fused.
  Status Allreduce(std::vector<TensorTableEntry>& entries);
  Status Broadcast(TensorTableEntry& entry);
  // `first_dims`: every rank's first dimension, or empty to exchange them here.
  Status Allgather(TensorTableEntry& entry, std::vector<int64_t> first_dims);
  Status Barrier();
  // Bitwise AND of `n` words over all ranks, in place: skip-negotiate mode's
  // check before op `name` of kind `op`, a wait watched like an unchecked
  // neighbor exchange's (see set_stall_times): nothing else notices a rank
  // that never submits the op.
  Status SkipModeAgreement(uint64_t* words, int n, OpType op, const std::string& name);
  // Every rank's list, in rank order (skip-negotiate mode, where negotiation
  // does not share the requests).
  Status AllgatherLists(const std::vector<int32_t>& mine, std::vector<std::vector<int32_t>>* all);
  // NEIGHBOR_ALLREDUCE / NEIGHBOR_ALLGATHER: send the input (scaled per
  // destination) to entry.dst_ranks and receive from entry.src_ranks into a
  // new output, in src order. `first_dims`: every rank's first dimension
  // (allgather form), or empty to exchange them with the neighbors here.
  Status NeighborExchange(TensorTableEntry& entry, const std::vector<int64_t>& first_dims);
  // Several NEIGHBOR_ALLREDUCE entries with identical send/receive lists and
  // weights, exchanged as one message per neighbor.
  Status NeighborAllreduceFused(std::vector<TensorTableEntry>& entries);

  // Negotiation transport: every rank's bytes, in rank order, on the control
  // communicator. Waits without holding a core busy for long. One collective
  // when every message fits the current slot, else a second for the rest. The
  // slot adapts to recent message sizes (identically on every rank, since all
  // see all sizes), up to `max_slot_bytes`.
  Status AllgatherBytes(const std::string& mine, std::vector<std::string>* all);
  void set_max_slot_bytes(size_t bytes);
  // In place, on the control communicator: `buf` on every rank (the same
  // length everywhere) combined by `reduce(in, inout, size)`, which must be
  // commutative.
  Status AllreduceMessage(std::vector<char>* buf, void (*reduce)(const char*, char*, size_t));

  // Allreduces of at least `bytes` (and at least 128 KiB per rank) run as
  // BlueFog's own ring of point-to-point messages; 0: always MPI's allreduce.
  void set_ring_bytes(int64_t bytes) { ring_bytes_ = bytes; }
  // AllgatherBytes' first round as point-to-point messages on up to this many
  // ranks (BLUEFOG_P2P_GATHER_RANKS), MPI_Iallgather on more.
  void set_p2p_gather_ranks(int64_t ranks) { p2p_gather_ranks_ = ranks; }

  // Called while the controller waits for peers (e.g. to run direct ops).
  void set_wait_hook(std::function<void()> hook) { wait_hook_ = std::move(hook); }

  // Neighbor exchanges whose send/receive pattern nobody checked (skip-
  // negotiate mode without enable_topo_check: set per exchange) wait for
  // their messages watching the clock: after `warn_seconds` a warning names
  // the op and the ranks it still waits for, and after `fail_seconds` (> 0)
  // the op fails (aborting the loop: the communicator holds unmatched
  // messages). A negotiated exchange's pattern was checked, so it just waits.
  void set_stall_times(double warn_seconds, double fail_seconds) {
    watch_warn_seconds_ = warn_seconds;
    watch_fail_seconds_ = fail_seconds;
  }
  void set_pattern_unchecked(bool unchecked) { watch_neighbors_ = unchecked; }

  void ReleaseBuffers() {
    fusion_.Release();
    scratch_.Release();
  }

 private:
  // Sums over `comm` from `in` into `out` (in place when they are the same),
  // then multiplies by `scale` (1: not at all); `ring` (UseRing of the bytes):
  // as BlueFog's ring, else with MPI's allreduce.
  Status AllreduceSum(const void* in, void* out, int64_t count, DataType dtype, MPI_Comm comm, double scale,
                      bool ring);
  bool UseRing(int64_t bytes, MPI_Comm comm) const;
  Status RingAllreduce(const void* in, void* out, int64_t count, DataType dtype, MPI_Comm comm, double scale);
  // With `stalled`: watched (warn, then fail, after the stall times), with
  // `stalled(seconds waited)` as the message.
  Status Wait(MPI_Request* request, const char* what,
              const std::function<std::string(int)>& stalled = nullptr);
  // Watched waits (see set_stall_times): whether stall times are set, and
  // what a wait that has lasted `seconds` must do now: nothing, warn (once
  // per warning interval; `next_warn`, first the warning time, says when),
  // or fail.
  enum class Stall { kQuiet, kWarn, kFail };
  bool Watching() const { return watch_warn_seconds_ > 0 || watch_fail_seconds_ > 0; }
  Stall CheckStall(double seconds, double* next_warn) const;
  // Each neighbor exchange's own pair of tags (data, data + 1 for sizes). All
  // ranks run the same neighbor exchanges in the same order, so the counters
  // agree; a message a peer sent that this rank never receives (a mismatched
  // pattern in skip-negotiate mode, unchecked) can never be taken for a later
  // exchange's data.
  int NextNeighborTag();
  // Waits for a neighbor exchange's requests: the receives from `src`, then
  // the sends to `dst`, in that order in `reqs`.
  // AllgatherBytes' first round on up to p2p_gather_ranks_ ranks:
  // `send` (`slot` bytes) to every rank, every rank's into slots_.
  Status GatherSlots(const char* send, size_t slot);
  // The control communicator's point-to-point messages: `bytes` from `send`
  // to `peer` and/or from `peer` into `recv` (either may be null), under
  // `tag`, in pieces that fit an eager message when there are few of them;
  // their requests wait in pieces_ for WaitPieces.
  Status PostPieces(const char* send, char* recv, int bytes, int peer, int tag);
  Status WaitPieces();
  Status WaitNeighbors(const std::string& name, OpType op, std::vector<MPI_Request>& reqs,
                       const std::vector<int32_t>& src, const std::vector<int32_t>& dst);

  MpiContext* mpi_;
  Timeline* timeline_;
  FusionBuffer fusion_;
  FusionBuffer scratch_;  // per-destination scaled copies; an in-place ring's received chunk
  std::vector<char> slots_;  // negotiation slots
  std::vector<int> rest_, displs_;  // AllgatherBytes' second round, reused
  size_t slot_bytes_;        // current slot size, the same on every rank
  size_t max_slot_bytes_;
  int small_rounds_ = 0;     // consecutive rounds that would fit a quarter slot
  int64_t ring_bytes_ = 0;   // set_ring_bytes
  int64_t p2p_gather_ranks_ = 32;  // set_p2p_gather_ranks
  uint32_t neighbor_exchanges_ = 0;  // NextNeighborTag's counter
  bool watch_neighbors_ = false;
  double watch_warn_seconds_ = 0, watch_fail_seconds_ = 0;
  std::vector<char> message_in_;  // AllreduceMessage's partner's message
  std::vector<MPI_Request> pieces_;  // PostPieces' requests, until WaitPieces
  std::function<void()> wait_hook_;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_MPI_CONTROLLER_H
