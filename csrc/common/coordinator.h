// Agreement on what runs next, computed identically on every rank.
//
// Every cycle each rank contributes its new requests; all ranks receive all
// contributions (in rank order) and feed them to their own Coordinator. Since
// every rank applies the same inputs in the same order, all reach the same
// decisions without a master: which ops are ready (submitted everywhere), in
// what order, which fail (ranks disagree, a peer shut down, a stall timed out).
#ifndef BLUEFOG_COMMON_COORDINATOR_H
#define BLUEFOG_COMMON_COORDINATOR_H

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "message.h"

namespace bluefog {

using Clock = std::chrono::steady_clock;

struct StallReport {
  std::string name;
  OpType op;
  std::vector<int> submitted;
  std::vector<int> missing;
  double seconds;
  // Certainly never completes: every rank is blocked waiting, and nothing has
  // moved anywhere for the stall time (see Stalls).
  bool deadlock = false;
};

// "" if every rank's send/receive lists are valid and mirror each other,
// else a description of the mismatch (used without negotiation too).
std::string CheckPattern(const std::vector<Request>& by_rank);

// How messages show an op's name: the name the user gave, quoted; for a
// window op (negotiated under the core's own 'bluefog.win_create.<name>')
// the window's name, with the op in front ("win_create 'w'") where `with_op`.
std::string ShownName(const std::string& name, bool with_op);

// "" if every rank's request (index = rank) for one op describes the same
// valid op, else why not: the fields that differ and who has what, or the
// ranks whose frontend refused it. Names are not compared (they are the key
// the requests were matched by).
std::string CheckAgreement(const std::vector<Request>& by_rank, int size);
// "" if the op every rank agrees on is valid (root in range, a summable
// dtype, ...), else why not.
std::string CheckValid(const Request& r, int size);

// Skip-negotiate mode, where each rank runs its ops in its own enqueue order
// with nobody matching them by name: a 64-bit digest of everything every rank
// must agree on (the name included), which the ranks compare before each op.
uint64_t SkipModeDigest(const Request& r);
// The error every rank reports when the digests differed (or a rank refused
// the op): `by_rank` holds each rank's request at this point of its order.
std::string SkipModeDisagreement(const std::vector<Request>& by_rank, int my_rank);
// When the digests agree: "" if the op is valid (CheckValid), else the error
// (the same on every rank).
std::string SkipModeInvalid(const Request& r, int size);

// Skip-negotiate mode fuses runs of small ops too. How many requests from
// queue[start] on (at most `most`) this rank could run fused: the same kind of
// fusible op (allreduce, neighbor_allreduce) with the same fusion key (dtype,
// flags; and this rank's lists and weights for neighbor ops), none refused,
// at most `threshold` bytes together; 1 if queue[start] cannot be fused. The
// ranks fuse the shortest such run any of them has.
int SkipModeFusiblePrefix(const std::vector<Request>& queue, size_t start, int most, int64_t threshold);
// A digest of the n requests from queue[start] on (their SkipModeDigests).
uint64_t SkipModePrefixDigest(const std::vector<Request>& queue, size_t start, int n);

// Skip-negotiate mode checks a neighbor op's send/receive pattern (with
// enable_topo_check) in the same AND-allreduce that compares the digests, on
// worlds of up to BLUEFOG_SKIP_PATTERN_MATRIX_RANKS ranks: each rank
// contributes its own row of the send matrix and of the receive matrix (one
// bit per rank, every other bit set), so the AND holds both matrices whole.
// (Before: two more list gathers, four collectives, per op.)
// The words the pattern adds to the agreement (the same on every rank; 0
// above `max_ranks`): a flag word, then the two matrices.
int PatternWords(int size, int64_t max_ranks);
// Whether skip-negotiate mode checks `r`'s send/receive pattern (a neighbor op
// with enable_topo_check).
bool HasPatternToCheck(const Request& r);
// This rank's `n` pattern words for `r`: every bit set when `r` has no
// pattern to check, and the flag word 0 when its lists do not fit the
// matrices (a rank out of range or this rank itself, a rank listed twice,
// weights that do not match the destinations).
void FillPatternWords(const Request& r, int rank, int size, int n, uint64_t* words);
// After the AND: false when some rank's lists did not fit (gather them
// instead); else true, with *problem CheckPattern's text ("" if they mirror).
bool PatternFromWords(const uint64_t* words, int n, int size, std::string* problem);

class Coordinator {
 public:
  void Reset(int size);

  // Applies one cycle's messages (index = rank); appends decisions in the
  // agreed order. `stall_failures` holds, per rank, the names that rank
  // declared timed out in its message.
  // Takes the requests out of `messages` (moved; the vectors keep their sizes).
  void Ingest(std::vector<CycleMessage>& messages, Clock::time_point now, std::vector<Response>* out);

  // Merges adjacent ready allreduce responses with the same dtype, average,
  // hierarchical flag and device (and neighbor_allreduce responses whose
  // send/receive lists and weights agree on every rank), up to `threshold`
  // bytes in all. Uses what
  // Ingest recorded about the ready ops; deterministic, so every rank fuses
  // identically.
  void Fuse(std::vector<Response>* responses, int64_t threshold);

  // Pending ops waiting longer than `warn_seconds` whose reporter is `my_rank`
  // (the lowest rank that submitted). Each op is reported at most once per
  // `warn_seconds`, unless it is deadlocked (then rank 0 reports every pending
  // op): every rank's last message said a
  // thread of it is blocked in a BlueFog wait, and for `warn_seconds` no rank
  // submitted or completed anything (ops, fast rounds, window ops). No
  // thread that waits can submit the missing ops then, so (short of a thread
  // that neither waits nor submits for that long) they never come.
  // Without `deadlocks`, no op is reported deadlocked.
  std::vector<StallReport> Stalls(Clock::time_point now, double warn_seconds, int my_rank, bool deadlocks = true);
  // Something completed outside Ingest (ops performed, a fast round).
  void NoteProgress(Clock::time_point now) { last_progress_ = now; }
  // A fast round without a full round: what its flags said (fast_round.h).
  void NoteRound(Clock::time_point now, bool all_waiting, bool moved) {
    waiting_.assign(size_, all_waiting);
    if (moved) last_progress_ = now;
  }

  bool AllShutdown() const;
  bool AnyShutdown() const;

 private:
  struct Pending {
    std::vector<Request> by_rank;
    std::vector<bool> submitted;
    int count = 0;
    Clock::time_point first_seen;
    Clock::time_point last_warned;
  };
  void FailGroupExtras(const Pending& first_member, std::vector<Response>* out);
  void FailMissingShutdown(std::vector<Response>* out);
  static Response Error(const Request& r, std::string message);
  // Every rank's last word: a thread of it is blocked in a BlueFog wait, or it has shut down.
  bool AllBlocked() const;
  // Per rank, up to a few names of the ops it has submitted that are still pending.
  std::vector<std::string> PendingByRank() const;
  // `pending`: PendingByRank() (deadlock only).
  Response StalledError(const Pending& p, Clock::time_point now, bool deadlock,
                        const std::vector<std::string>& pending) const;

  int size_ = 0;
  std::map<std::string, Pending> table_;  // ordered: deterministic iteration
  std::vector<bool> shutdown_;
  std::vector<bool> waiting_;      // per rank, from its last message
  Clock::time_point last_progress_;
  // Members of a grouped allreduce whose ranks disagreed on the group's size
  // that only the ranks with more tensors submit: name -> why, and the ranks
  // still to submit it (each such request fails on arrival).
  struct Orphan {
    std::string why;
    std::vector<bool> expected;
  };
  std::map<std::string, Orphan> orphans_;
  struct ReadyInfo {
    int64_t bytes;
    std::string fusion_key;
  };
  std::map<std::string, ReadyInfo> ready_;  // this cycle's ready ops
  std::vector<Response> fused_;             // Fuse's output buffer, reused
  // Ingest's bookkeeping: entries given a request whose payload is a view into
  // the round's receive buffer, and entries completed this round.
  std::vector<std::map<std::string, Pending>::iterator> viewed_, completed_;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_COORDINATOR_H
