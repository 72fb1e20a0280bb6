// A repeated small allreduce agreed on and summed by ONE allreduce of a message.
//
// The usual exchange gathers every rank's requests (an allgather), and a small
// allreduce travels inside it (inline_ops.h): the op costs an allgather of
// every rank's input plus decoding. In a loop that reduces the same small
// tensor again and again, BlueFog can do better, and every rank can tell when,
// from what was agreed before: when the last two exchanges each ran exactly
// one op, an inline allreduce, the next exchange starts with a "fast round".
//
// In a fast round every rank allreduces one fixed-size message (BlueFog's own
// recursive doubling, MpiController::AllreduceMessage): a header that
// holds the exact description of the one allreduce it offers (its first new
// request: name, dtype, shape, average flag, size), then that op's input.
// BlueFog's own reduction compares the descriptions and, where they are equal,
// sums the inputs. When every rank offered the same op, the sum is its result
// and no other message is needed. When they differ (a rank offered another op
// or none), or a rank has more to say (other requests, a shutdown, a stall),
// the result says so on every rank, and the usual allgather exchange follows
// in the same cycle with whatever is left. Names are compared in full: ops can
// never be mixed up, and a mismatch reaches the usual checks and errors.
#ifndef BLUEFOG_COMMON_FAST_ROUND_H
#define BLUEFOG_COMMON_FAST_ROUND_H

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "message.h"

namespace bluefog {

class FastRound {
 public:
  // Bytes before the input: flags, then the op's description.
  static constexpr size_t kHeaderBytes = 128;

  void Reset();
  // Whether this exchange starts with a fast round (the same on every rank).
  bool active() const { return active_; }
  // The input bytes a fast round carries (the larger of the last two
  // fast-worthy ops' sizes).
  int64_t capacity() const { return capacity_; }

  // Whether `r` (this rank's request) can be offered: a CPU allreduce that
  // could travel inline, valid on its own, whose description fits the header
  // and whose input fits the capacity.
  bool Eligible(const Request& r) const;

  // Fills `buf` (kHeaderBytes + capacity) with this rank's offer: `offer`
  // (nullptr: none) and its input, whether it has more for this cycle, and
  // what negotiation messages tell the deadlock check (CycleMessage's
  // `waiting` and `moved`).
  void Build(const Request* offer, std::string_view input, bool more, bool waiting, bool moved,
             std::vector<char>* buf) const;

  // What the summed message says (the same on every rank).
  struct Outcome {
    bool agreed = false;    // every rank offered the same op: `sum` is its result
    bool need_full = false; // the allgather exchange must follow in this cycle
    std::string_view sum;   // the summed inputs (agreed only)
    bool all_waiting = false;  // every rank had a thread blocked in a BlueFog wait
    bool any_moved = false;    // some rank completed direct ops since it last told
  };
  static Outcome Read(const std::vector<char>& buf);

  // After each exchange that completed something: `worthy_bytes` is the
  // input size of the exchange's only op when that op was a small allreduce
  // that travelled inline or in a fast round (and whose description fits the
  // header), else 0. Two such exchanges in a row (exchanges that completed
  // nothing in between do not count) make the next exchange start with a
  // fast round.
  void Update(int64_t worthy_bytes);

  // Whether an agreed request counts as fast-worthy (every rank computes it
  // from the agreed request alone).
  static bool Fits(const Request& r);

  // The reduction of two fast-round messages of `size` bytes, `in` into
  // `inout` (commutative): ORs the flags, marks differing descriptions, and
  // sums the inputs where the descriptions agree.
  static void Reduce(const char* in, char* inout, size_t size);

 private:
  bool active_ = false;
  int64_t last_worthy_ = 0;
  int64_t capacity_ = 0;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_FAST_ROUND_H
