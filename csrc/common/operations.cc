#include "operations.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "config.h"
#include "coordinator.h"
#include "fast_round.h"
#include "half.h"
#include "handle_manager.h"
#include "inline_ops.h"
#include "logging.h"
#include "mpi_context.h"
#include "mpi_controller.h"
#include "tensor_queue.h"
#include "timeline.h"
#include "window_manager.h"

namespace bluefog {

namespace {

struct GlobalState {
  std::mutex lifecycle_mu;
  std::atomic<bool> running{false};
  std::atomic<uint64_t> generation{0};  // counts inits that started the core (changed under lifecycle_mu)
  // set_skip_negotiate_stage switches submitted here and not completed yet: other
  // ops are refused meanwhile (a rank whose peers submit theirs after the switch
  // would negotiate them in the other mode, and the two would never meet).
  std::atomic<int> switches_pending{0};
  std::atomic<bool> shutdown_requested{false};
  std::atomic<bool> loop_failed{false};
  std::atomic<bool> skip_negotiate{false};
  std::atomic<bool> suspended{false};
  std::string loop_error;  // written before loop_failed is set
  Config config;
  MpiContext mpi;
  TensorQueue queue;
  Coordinator coordinator;
  Timeline timeline;
  std::unique_ptr<MpiController> controller;
  std::unique_ptr<WindowManager> windows;
  std::thread thread;
  // Held by whichever thread runs a cycle: the background thread, or a caller
  // blocked on its own op (HelpUntil). MPI sees one thread at a time.
  std::mutex cycle_mu;
  std::atomic<uint64_t> exchanges{0};       // negotiation exchanges so far
  std::atomic<int> helpers{0};              // callers inside HelpUntil
  std::atomic<uint64_t> caller_exchanges{0};  // of `exchanges`, those run by callers
  std::atomic<uint64_t> fast_rounds{0};       // exchanges that began with a fast round
  std::atomic<uint64_t> fast_agreed{0};       // ... and completed an op in it
  std::atomic<uint64_t> skip_batches{0};      // skip-mode agreements on a first op (one batch each)
  std::atomic<uint64_t> skip_fused_ops{0};    // ops that ran in a skip-mode batch of several
  std::atomic<bool> loop_done{false};       // the background loop has ended
  std::atomic<bool> last_cycle_moved{false};
  std::vector<std::string> my_timed_out;  // under cycle_mu
  std::vector<std::string> my_deadlocked;  // under cycle_mu
  // Set while suspended or in skip-negotiate mode: the next exchange does not
  // count the time before it as quiet (the deadlock check).
  std::atomic<bool> quiet_gap{false};
  uint64_t direct_seen = 0, direct_now = 0;  // direct ops completed: told the peers / at this exchange
  // An exchange's buffers, kept between exchanges so that their memory is
  // reused (under cycle_mu).
  CycleMessage mine;
  std::string sent;
  std::vector<std::string> received;
  std::vector<CycleMessage> decoded;
  std::vector<Response> responses;
  FastRound fast;               // under cycle_mu
  std::vector<char> fast_buf;   // a fast round's message, reused
  std::vector<uint64_t> agree_words;  // a skip-mode agreement's words, reused (under cycle_mu)
  std::vector<Request> skip_queue;    // a skip-mode cycle's requests, reused (under cycle_mu)
};

thread_local bool tls_in_cycle = false;      // this thread holds cycle_mu (callbacks run in it)
thread_local bool tls_caller_waits = false;  // see CallerWaitsScope
thread_local bool tls_enqueued_owned = false;  // the last op this thread enqueued is owned

struct InCycle {
  InCycle() { tls_in_cycle = true; }
  ~InCycle() { tls_in_cycle = false; }
};

// Never destroyed: the background thread may outlive static destruction order.
GlobalState& State() {
  static GlobalState* state = new GlobalState();
  return *state;
}

// Why no op can be submitted now; `what` (e.g. "allreduce 'x'") leads the message.
Status NotRunning(const std::string& what = std::string()) {
  const std::string lead = what.empty() ? what : what + ": ";
  GlobalState& g = State();
  if (InForkedChild()) {
    return Status::PreconditionError(lead + "BlueFog ops cannot run in a process forked from a BlueFog rank (e.g. a "
                                     "DataLoader worker): communicate from the rank's own process");
  }
  if (g.loop_failed) return Status::Aborted(lead + "BlueFog's background loop stopped after an error: " + g.loop_error);
  if (g.shutdown_requested) return Status::PreconditionError(lead + "BlueFog is shutting down; no new ops are accepted");
  return Status::PreconditionError(lead + "BlueFog is not initialized: call bf.init() first");
}

std::chrono::microseconds IdleTick(const Config& c) {
  // Idle ranks still join a negotiation now and then, so that stalls are seen
  // and a shutdown is agreed; an op's own latency never waits for this tick.
  double ms = 100.0;
  if (c.stall_check_seconds > 0) ms = std::min(ms, std::max(1.0, c.stall_check_seconds * 1000.0 / 10.0));
  return std::chrono::microseconds(static_cast<int64_t>(ms * 1000));
}

void FailResponse(GlobalState& g, const Response& resp) {
  if (resp.only_rank >= 0 && resp.only_rank != g.mpi.rank()) return;
  Status s = resp.error_is_abort ? Status::Aborted(resp.error) : Status::InvalidArgument(resp.error);
  for (const auto& name : resp.names) {
    TensorTableEntry e;
    if (!g.queue.Take(name, &e)) continue;  // this rank never submitted it
    g.timeline.End(name);                   // NEGOTIATE
    CompleteEntry(e, s);
  }
}

void WaitReady(const TensorTableEntry& e) {
  if (!e.ready_event) return;
  while (!e.ready_event->Ready()) std::this_thread::yield();
}

// The error of op `name` whose send/receive pattern has `problem` (OK if none).
Status PatternError(OpType op, const std::string& name, const std::string& problem) {
  if (problem.empty()) return Status::OK();
  return Status::InvalidArgument("bluefog " + std::string(OpTypeName(op)) + " '" + name + "': " + problem);
}

// Skip-negotiate mode: with the topology check on, every rank shares its
// send/receive lists and all fail alike on a mismatch (nothing is exchanged).
// (Up to BLUEFOG_SKIP_PATTERN_MATRIX_RANKS ranks with lists that fit, the
// agreement's own allreduce decides it.) Here the lists travel in one list
// gather (two collectives): the source count, the sources, the destinations.
Status SkipModePatternCheck(GlobalState& g, const Request& e) {
  std::vector<int32_t> mine;
  mine.reserve(1 + e.src_ranks.size() + e.dst_ranks.size());
  mine.push_back(static_cast<int32_t>(e.src_ranks.size()));
  mine.insert(mine.end(), e.src_ranks.begin(), e.src_ranks.end());
  mine.insert(mine.end(), e.dst_ranks.begin(), e.dst_ranks.end());
  std::vector<std::vector<int32_t>> all;
  Status s = g.controller->AllgatherLists(mine, &all);
  if (!s.ok()) return s;
  std::vector<Request> by_rank(all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    const auto& l = all[r];
    if (l.empty()) continue;
    const size_t n_src = std::min<size_t>(static_cast<size_t>(std::max(0, l[0])), l.size() - 1);
    by_rank[r].src_ranks.assign(l.begin() + 1, l.begin() + 1 + n_src);
    by_rank[r].dst_ranks.assign(l.begin() + 1 + n_src, l.end());
  }
  return PatternError(e.op, e.name, CheckPattern(by_rank));
}

int64_t InlineBudget(const GlobalState& g) { return g.config.inline_bytes / std::max(1, g.mpi.size()); }

// Completes an op whose data came with the negotiation itself (inline, or in
// a fast round): `compute()` forms the result here, under timeline `phase`.
// (No strings are built for a timeline that is off: this runs once per small op.)
template <typename Compute>
void CompleteHere(GlobalState& g, TensorTableEntry& e, const char* phase, Compute compute) {
  const bool timed = g.timeline.enabled();
  const std::string name = timed ? e.name : std::string();  // `e` is gone after CompleteEntry
  if (timed) {
    g.timeline.End(name);  // NEGOTIATE (which carried the data)
    g.timeline.Start(name, phase);
  }
  Status s = compute();
  if (timed) {
    g.timeline.End(name);
    g.timeline.Start(name, "CALLBACK");
  }
  CompleteEntry(e, s);
  if (timed) g.timeline.End(name);
}

// An op whose inputs all came with the negotiation exchange: no MPI here.
Status PerformInline(GlobalState& g, const Response& resp) {
  TensorTableEntry e;
  if (!g.queue.Take(resp.names[0], &e)) {
    return Status::UnknownError("internal error: agreed op '" + resp.names[0] + "' is missing on this rank");
  }
  CompleteHere(g, e, "COMMUNICATE_INLINE", [&] { return ComputeInline(resp, g.mpi.rank(), e); });
  return Status::OK();
}

// Runs one agreed response; `first_dims` empty in skip-negotiate mode.
Status Perform(GlobalState& g, const Response& resp) {
  if (!resp.inline_by_rank.empty()) return PerformInline(g, resp);
  std::vector<TensorTableEntry> entries(resp.names.size());
  for (size_t i = 0; i < resp.names.size(); ++i) {
    if (!g.queue.Take(resp.names[i], &entries[i])) {
      return Status::UnknownError("internal error: agreed op '" + resp.names[i] + "' is missing on this rank");
    }
    WaitReady(entries[i]);
    g.timeline.End(entries[i].name);  // NEGOTIATE
  }
  Status s;
  bool skip_now = false;
  if (resp.op == OpType::NEIGHBOR_ALLREDUCE || resp.op == OpType::NEIGHBOR_ALLGATHER) {
    // Skip mode without the topology check: nobody checked the pattern.
    g.controller->set_pattern_unchecked(g.skip_negotiate && !entries[0].int_arg);
  }
  switch (resp.op) {
    case OpType::ALLREDUCE:
      s = g.controller->Allreduce(entries);
      break;
    case OpType::BROADCAST:
      s = g.controller->Broadcast(entries[0]);
      break;
    case OpType::ALLGATHER:
      s = g.controller->Allgather(entries[0], resp.first_dims.empty() ? std::vector<int64_t>() : resp.first_dims[0]);
      break;
    case OpType::NEIGHBOR_ALLREDUCE:
      s = entries.size() > 1 ? g.controller->NeighborAllreduceFused(entries)
                             : g.controller->NeighborExchange(entries[0], {});
      break;
    case OpType::NEIGHBOR_ALLGATHER:
      s = g.controller->NeighborExchange(entries[0], resp.first_dims.empty() ? std::vector<int64_t>()
                                                                            : resp.first_dims[0]);
      break;
    case OpType::WIN_CREATE: {
      g.timeline.Start(entries[0].name, "COMMUNICATE");
      std::vector<std::vector<int32_t>> all_src = resp.all_src_ranks;
      if (all_src.empty()) {  // skip mode: nothing was negotiated
        s = g.controller->AllgatherLists(entries[0].src_ranks, &all_src);
      }
      if (s.ok()) {
        s = g.windows->Create(entries[0].name.substr(kWinCreatePrefix.size()), entries[0].input,
                              entries[0].int_arg != 0, entries[0].dst_ranks, all_src);
      }
      g.timeline.End(entries[0].name);
      break;
    }
    case OpType::WIN_FREE:
      s = g.windows->Free(entries[0].name.substr(kWinFreePrefix.size()));
      break;
    case OpType::BARRIER:
      g.timeline.Start(entries[0].name, "COMMUNICATE");
      s = g.controller->Barrier();
      g.timeline.End(entries[0].name);
      break;
    case OpType::SET_SKIP_NEGOTIATE:
      // Leaving skip mode: make sure every rank reached this point first.
      if (g.skip_negotiate) s = g.controller->Barrier();
      skip_now = entries[0].int_arg != 0;
      break;
  }
  // Switch before the callbacks, so the caller sees the new mode on return.
  if (resp.op == OpType::SET_SKIP_NEGOTIATE && s.ok()) g.skip_negotiate = skip_now;
  for (auto& e : entries) {
    std::string name = e.name;
    g.timeline.Start(name, "CALLBACK");
    CompleteEntry(e, s);
    g.timeline.End(name);
  }
  // A failed collective leaves the communicator unusable: stop.
  return s.type() == StatusType::ABORTED ? s : Status::OK();
}

void StartNegotiation(GlobalState& g, const Request& r) {
  if (g.timeline.enabled()) g.timeline.Start(r.name, "NEGOTIATE_" + OpTypeUpper(r.op));
}

void StartNegotiation(GlobalState& g, const std::vector<Request>& requests) {
  for (const auto& r : requests) StartNegotiation(g, r);
}

bool HelpingAllowed(const GlobalState& g) {
  return g.config.caller_runs && g.running && !g.shutdown_requested && !g.loop_failed && !g.loop_done &&
         !g.suspended && !g.skip_negotiate;
}

// Whether a thread about to negotiate should first wait for more work.
// Ops waiting for peers: if the last exchange moved (anyone submitted or
// something ran), negotiate again at once — the peers are busy submitting,
// and the next exchange simply waits for them. If it did not move, wait up
// to the cycle time for new local work (no hot loop of empty exchanges).
// Without `count_owned`, new requests whose callers will run them do not count.
bool ShouldWait(GlobalState& g, bool count_owned = true) {
  return !g.queue.HasNewRequests(count_owned) && !g.shutdown_requested &&
         !(g.queue.InFlight() > 0 && g.last_cycle_moved);
}

// The background thread's version: ops whose callers run the cycle themselves
// are not its business, and while a caller is running cycles it stays out
// of the way (the caller wakes it when it stops with work left).
bool LoopShouldWait(GlobalState& g) {
  return !g.shutdown_requested && (g.helpers > 0 || ShouldWait(g, /*count_owned=*/false));
}

// The background thread's wait before an exchange (no lock held).
void AwaitExchange(GlobalState& g) {
  if (!LoopShouldWait(g)) return;
  const bool helped = g.helpers > 0;  // then no polling either: the caller has the core's work
  auto wait = !helped && g.queue.InFlight() > 0
                  ? std::chrono::microseconds(static_cast<int64_t>(g.config.cycle_time_ms * 1000))
                  : IdleTick(g.config);
  g.queue.WaitForWork(wait, std::chrono::microseconds(helped ? 0 : g.config.spin_time_us), /*count_owned=*/false);
}

// Records why the loop must stop (every thread sees loop_failed); returns false.
bool StopLoop(GlobalState& g, std::string why) {
  g.loop_error = std::move(why);  // written before loop_failed is set
  g.loop_failed = true;
  return false;
}

// A fast round (fast_round.h), offering this rank's first new request when it
// can be. The agreed op, if any, is completed and removed from `g.mine`;
// `*done_bytes` is its input size (else 0), `*full` whether the allgather
// exchange must follow. False if MPI failed (the loop must stop).
bool RunFastRound(GlobalState& g, int64_t* done_bytes, bool* full) {
  CycleMessage& mine = g.mine;
  *done_bytes = 0;
  const Request* offer = nullptr;
  std::string_view input;
  if (!mine.requests.empty() && g.fast.Eligible(mine.requests[0]) &&
      g.queue.ViewInput(mine.requests[0].name, g.fast.capacity(), &input)) {
    offer = &mine.requests[0];
  }
  const bool more = mine.requests.size() > (offer ? 1u : 0u) || mine.shutdown || !mine.timed_out.empty() ||
                    !mine.deadlocked.empty();
  g.fast.Build(offer, input, more, mine.waiting, mine.moved, &g.fast_buf);
  Status s = g.controller->AllreduceMessage(&g.fast_buf, FastRound::Reduce);
  if (!s.ok()) return StopLoop(g, s.reason());
  const FastRound::Outcome o = FastRound::Read(g.fast_buf);
  g.direct_seen = g.direct_now;  // told
  // What the deadlock check learns from the round (a full round tells it too).
  // (An op agreed in it is progress too: Exchange notes that.)
  if (!o.need_full) g.coordinator.NoteRound(Clock::now(), o.all_waiting, o.any_moved);
  *full = o.need_full;
  ++g.fast_rounds;
  if (!o.agreed) return true;
  ++g.fast_agreed;
  // Every rank offered this very op (names compared in full), this one too.
  TensorTableEntry e;
  if (!offer || !g.queue.Take(offer->name, &e) || e.input->size_bytes() != static_cast<int64_t>(o.sum.size())) {
    return StopLoop(g, "internal error: a fast round agreed on an op this rank did not offer");
  }
  CompleteHere(g, e, "COMMUNICATE_FAST", [&] {
    std::memcpy(e.output->data(), o.sum.data(), o.sum.size());
    const int64_t count = static_cast<int64_t>(o.sum.size() / DataTypeSize(e.input->dtype()));
    if (e.average) ScaleBuffer(e.input->dtype(), e.output->data(), count, 1.0 / static_cast<double>(g.mpi.size()));
    return Status::OK();
  });
  *done_bytes = static_cast<int64_t>(o.sum.size());
  mine.requests.erase(mine.requests.begin());
  return true;
}

// The allgather exchange: every rank's requests (with small inputs inline),
// decoded and agreed on by the coordinator, into g.responses (fused).
// False if MPI failed or a message was corrupt.
bool FullRound(GlobalState& g, Clock::time_point now) {
  CycleMessage& mine = g.mine;
  if (g.config.inline_bytes > 0) AttachPayloads(g.queue, InlineBudget(g), &mine.requests);
  g.sent.clear();
  EncodeCycleMessage(mine, &g.sent);
  g.direct_seen = g.direct_now;  // told
  Status s = g.controller->AllgatherBytes(g.sent, &g.received);
  if (!s.ok()) return StopLoop(g, s.reason());
  std::vector<CycleMessage>& all = g.decoded;
  all.resize(g.received.size());
  for (size_t r = 0; r < g.received.size(); ++r) {
    if (!DecodeCycleMessage(g.received[r].data(), g.received[r].size(), &all[r])) {
      return StopLoop(g, "corrupt negotiation message from rank " + std::to_string(r));
    }
  }
  g.coordinator.Ingest(all, now, &g.responses);
  bool moved = !g.responses.empty();
  for (const auto& m : all) moved = moved || !m.requests.empty();
  g.last_cycle_moved = moved;
  g.coordinator.Fuse(&g.responses, g.config.fusion_threshold_bytes);
  return true;
}

// The input size of an exchange's only op when it could have run in a fast
// round (computed from agreed data alone, so the same on every rank), else 0.
int64_t FastWorthyBytes(const std::vector<Response>& responses, int64_t fast_bytes) {
  if (fast_bytes > 0) return responses.empty() ? fast_bytes : 0;
  if (responses.size() != 1 || !responses[0].error.empty() || responses[0].op != OpType::ALLREDUCE) return 0;
  const auto& by_rank = responses[0].inline_by_rank;
  if (by_rank.empty() || !FastRound::Fits(by_rank[0])) return 0;
  return static_cast<int64_t>(by_rank[0].Payload().size());
}

// One negotiation exchange and the ops it agrees on (cycle_mu held).
// Returns false when the loop must stop.
bool Exchange(GlobalState& g) {
  g.queue.RunDirect();
  CycleMessage& mine = g.mine;
  mine.requests.clear();
  mine.timed_out.clear();
  mine.deadlocked.clear();
  mine.shutdown = g.shutdown_requested;
  mine.waiting = BlockedWait::Count() > 0;
  g.direct_now = g.queue.DirectCompleted();
  mine.moved = g.direct_now != g.direct_seen;  // (told in this exchange's first round)
  g.queue.PopRequests(&mine.requests);
  mine.timed_out.swap(g.my_timed_out);
  mine.deadlocked.swap(g.my_deadlocked);
  StartNegotiation(g, mine.requests);

  if (g.quiet_gap) {  // suspended, or in skip-negotiate mode: not a quiet time of negotiation
    g.quiet_gap = false;
    g.coordinator.NoteProgress(Clock::now());
  }
  std::vector<Response>& responses = g.responses;
  responses.clear();
  int64_t fast_bytes = 0;
  bool full = true;
  const bool fast = g.config.fast_rounds && g.fast.active();
  if (fast && !RunFastRound(g, &fast_bytes, &full)) return false;
  auto now = Clock::now();
  if (full) {
    if (!FullRound(g, now)) return false;
  } else {
    g.last_cycle_moved = fast_bytes > 0;
  }
  if (fast_bytes > 0) g.coordinator.NoteProgress(now);
  ++g.exchanges;
  // An exchange that completed nothing (every rank waiting for a late one, an
  // idle tick) does not end a run of repeated small allreduces: the late
  // rank's op is then offered in a fast round too.
  if (!responses.empty() || fast_bytes > 0) g.fast.Update(FastWorthyBytes(responses, fast_bytes));
  for (const auto& resp : responses) {
    if (!resp.error.empty()) {
      BFLOG(DEBUG) << resp.error;
      FailResponse(g, resp);
      continue;
    }
    Status s = Perform(g, resp);
    if (!s.ok()) return StopLoop(g, s.reason());
    // Switched to skip mode: the rest of this cycle's responses still run, in order.
  }
  // (Ops may have run for long: their end is progress too.)
  now = Clock::now();
  if (!responses.empty()) g.coordinator.NoteProgress(now);
  for (const auto& stall :
       g.coordinator.Stalls(now, g.config.stall_check_seconds, g.mpi.rank(), g.config.deadlock_check)) {
    if (stall.deadlock) {  // failed on every rank in the next exchange, with the reason
      g.my_deadlocked.push_back(stall.name);
      continue;
    }
    BFLOG(WARNING) << "stall: " << OpTypeName(stall.op) << " '" << stall.name << "' has waited "
                   << static_cast<int>(stall.seconds) << " s: submitted by " << RankList(stall.submitted)
                   << " but not yet by " << RankList(stall.missing)
                   << ". Are those ranks running a different sequence of ops?";
    if (g.config.stall_shutdown_seconds > 0 && stall.seconds >= g.config.stall_shutdown_seconds) {
      g.my_timed_out.push_back(stall.name);
    }
  }
  return !g.coordinator.AllShutdown();
}

// Skip-negotiate mode: before each op the ranks compare digests of what they
// are about to run (one small allreduce), so an op submitted in another
// order, under another name, with another shape, dtype, root, ..., or refused
// by a rank's frontend fails on every rank (InvalidArgument) instead of
// exchanging mismatched data. Only then are the requests gathered, to say
// what differs. The same allreduce carries a neighbor op's send/receive
// pattern (PatternWords; lists that do not fit, or too many ranks: gathered
// by SkipModePatternCheck), and how many of the next requests each rank could
// fuse with the first (SkipModeFusiblePrefix, as a run of set bits: the AND
// is the shortest run). When that is more than one, a second allreduce
// compares a digest of the whole run; *fused is then how many requests from
// queue[start] run as one (a fused run of neighbor ops has the first one's
// lists on every rank, so its pattern is checked once).
constexpr int kSkipFuseMost = 64;  // the bits of one word

Status SkipModeAgree(GlobalState& g, const std::vector<Request>& queue, size_t start, int* fused) {
  const Request& r = queue[start];
  *fused = 1;
  const uint64_t digest = SkipModeDigest(r);
  const int size = g.mpi.size();
  std::vector<uint64_t>& words = g.agree_words;
  const int n_pattern = PatternWords(size, g.config.skip_pattern_matrix_ranks);
  words.assign(4 + n_pattern, 0);
  words[0] = digest;
  words[1] = ~digest;
  words[2] = r.rejected.empty() ? ~uint64_t{0} : ~uint64_t{1};
  const int run = SkipModeFusiblePrefix(queue, start, kSkipFuseMost, g.config.fusion_threshold_bytes);
  words[3] = run >= 64 ? ~uint64_t{0} : (uint64_t{1} << run) - 1;
  FillPatternWords(r, g.mpi.rank(), size, n_pattern, words.data() + 4);
  Status s = g.controller->SkipModeAgreement(words.data(), static_cast<int>(words.size()), r.op, r.name);
  if (!s.ok()) return s;
  const bool same = words[0] == ~words[1];  // the AND of all digests equals their OR
  const bool refused = (words[2] & 1) == 0;
  if (same && !refused) {
    const std::string invalid = SkipModeInvalid(r, size);
    if (!invalid.empty()) return Status::InvalidArgument(invalid);
    if (HasPatternToCheck(r)) {
      // (Every rank takes the same branch: the flag word is ANDed.)
      std::string problem;
      if (PatternFromWords(words.data() + 4, n_pattern, size, &problem)) {
        if (!problem.empty()) return PatternError(r.op, r.name, problem);
      } else {
        s = SkipModePatternCheck(g, r);
        if (!s.ok()) return s;
      }
    }
    const int shortest = words[3] == ~uint64_t{0} ? 64 : __builtin_ctzll(~words[3]);
    if (shortest > 1) {
      // (The same decision on every rank: it follows from the AND alone.)
      const uint64_t run_digest = SkipModePrefixDigest(queue, start, shortest);
      uint64_t pair[2] = {run_digest, ~run_digest};
      s = g.controller->SkipModeAgreement(pair, 2, r.op, r.name);
      if (!s.ok()) return s;
      if (pair[0] == ~pair[1]) {
        // The same ops everywhere: each is valid or not on every rank alike.
        int n = 1;
        while (n < shortest && SkipModeInvalid(queue[start + n], size).empty()) ++n;
        *fused = n;
      }  // else: the first op alone; the next agreement finds what differs
    }
    return Status::OK();
  }
  CycleMessage mine;
  mine.requests.push_back(r);
  std::string bytes;
  EncodeCycleMessage(mine, &bytes);
  std::vector<std::string> all;
  s = g.controller->AllgatherBytes(bytes, &all);
  if (!s.ok()) return s;
  std::vector<Request> by_rank(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    CycleMessage m;
    if (!DecodeCycleMessage(all[i].data(), all[i].size(), &m) || m.requests.size() != 1) {
      return Status::Aborted("internal error: rank " + std::to_string(i) + "'s skip-mode request is unreadable");
    }
    by_rank[i] = std::move(m.requests[0]);
  }
  return Status::InvalidArgument(SkipModeDisagreement(by_rank, g.mpi.rank()));
}

// Skip-negotiate mode: run this rank's requests in enqueue order (cycle_mu
// held; the wait for them comes before), fusing runs of small ops the ranks
// agree on. Requests submitted meanwhile join the queue before an agreement
// (up to kSkipCycleMost requests a cycle), so that a batch submitted back to
// back can run as one.
constexpr size_t kSkipCycleMost = 4 * kSkipFuseMost;

bool RunSkipCycle(GlobalState& g) {
  // Shutting down: the ops already submitted still run in skip mode first
  // (the peers run them so), then the ranks agree on shutdown through
  // negotiation; every rank gets there eventually.
  const bool shutting_down = g.shutdown_requested;
  g.queue.RunDirect();
  std::vector<Request>& queue = g.skip_queue;
  queue.clear();
  g.queue.PopRequests(&queue);
  // Suspended since the loop looked: nothing now. (Checked after the pop:
  // a suspend() that came before an op this pop took is seen here.)
  if (g.suspended && !shutting_down) {
    g.queue.Unpop(queue.begin(), queue.end());
    queue.clear();
    return true;
  }
  size_t next = 0;
  while (next < queue.size()) {
    if (queue.size() - next < static_cast<size_t>(kSkipFuseMost) && queue.size() < kSkipCycleMost &&
        !g.suspended) {
      g.queue.PopRequests(&queue);
    }
    StartNegotiation(g, queue[next]);
    Response resp;
    int fused = 1;
    Status s = SkipModeAgree(g, queue, next, &fused);
    ++g.skip_batches;
    if (fused > 1) g.skip_fused_ops += static_cast<uint64_t>(fused);
    resp.op = queue[next].op;
    for (int i = 0; i < fused; ++i) {
      resp.names.push_back(queue[next + i].name);
      if (i > 0) StartNegotiation(g, queue[next + i]);
    }
    next += fused;
    if (s.type() == StatusType::INVALID_ARGUMENT) {
      resp.error = s.reason();
      FailResponse(g, resp);
      continue;
    }
    if (s.ok()) s = Perform(g, resp);
    if (!s.ok()) return StopLoop(g, s.reason());
    // Out of skip mode: what was taken after the switch is negotiated.
    if (!g.skip_negotiate) break;
  }
  g.queue.Unpop(queue.begin() + static_cast<std::ptrdiff_t>(next), queue.end());
  queue.clear();
  if (shutting_down) g.skip_negotiate = false;
  return true;
}

void BackgroundLoop() {
  GlobalState& g = State();
  while (true) {
    if (g.suspended && !g.shutdown_requested) {
      g.quiet_gap = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    const bool skip = g.skip_negotiate;
    const uint64_t seen = g.exchanges;
    if (!skip) {
      AwaitExchange(g);
    } else if (!g.shutdown_requested && !g.queue.HasNewRequests()) {
      g.queue.WaitForWork(std::chrono::milliseconds(100), std::chrono::microseconds(g.config.spin_time_us));
    }
    std::lock_guard<std::mutex> lock(g.cycle_mu);
    if (g.loop_failed) break;  // a caller's cycle failed
    if (skip != g.skip_negotiate) continue;
    if (g.suspended && !g.shutdown_requested) continue;  // suspended during the wait: no cycle now
    // A caller is running cycles, or ran them meanwhile and left nothing to do.
    if (!skip && !g.shutdown_requested && (g.helpers > 0 || (g.exchanges != seen && LoopShouldWait(g)))) continue;
    InCycle in_cycle;
    if (skip) g.quiet_gap = true;
    if (!(skip ? RunSkipCycle(g) : Exchange(g))) break;
  }
  std::lock_guard<std::mutex> lock(g.cycle_mu);
  InCycle in_cycle;
  g.loop_done = true;
  if (g.loop_failed) BFLOG(ERROR) << "background loop stopped: " << g.loop_error;
  // Every rank leaves the loop in the same cycle with the same windows.
  if (!g.loop_failed) g.windows->FreeAll();
  g.queue.RunDirect(/*force=*/true);  // direct ops queued meanwhile fail on the missing windows
  const Status end = g.loop_failed ? Status::Aborted("BlueFog's background loop stopped: " + g.loop_error)
                                   : Status::Aborted("BlueFog has shut down");
  g.queue.FailDirect(end);  // e.g. one still waiting for a window mutex
  g.queue.FailAll(end);
}

Status Enqueue(TensorTableEntry entry, Request request) {
  GlobalState& g = State();
  if (!g.running || g.shutdown_requested || g.loop_failed || InForkedChild()) {
    // (Control ops, e.g. barrier, carry the core's own name: the caller names them.)
    const OpType op = entry.op;
    const bool user_named = op == OpType::ALLREDUCE || op == OpType::BROADCAST || op == OpType::ALLGATHER ||
                            op == OpType::NEIGHBOR_ALLREDUCE || op == OpType::NEIGHBOR_ALLGATHER;
    return NotRunning(user_named               ? OpTypeName(op) + (" " + ShownName(entry.name, false))
                      : op == OpType::WIN_CREATE ? ShownName(entry.name, true)
                                                 : std::string());
  }
  if (g.switches_pending > 0 && entry.op != OpType::SET_SKIP_NEGOTIATE) {
    return Status::PreconditionError(
        std::string(OpTypeName(entry.op)) + " " + ShownName(entry.name, false) +
        ": " + kSwitchPending +
        " (interrupted, or still waiting for the other ranks in another thread); no other op may start before it "
        "does (call it again to finish it)");
  }
  request.name = entry.name;
  request.op = entry.op;
  const bool timed = g.timeline.enabled();
  if (timed) g.timeline.Start(entry.name, "ENQUEUE_" + OpTypeUpper(entry.op));
  std::string name = timed ? entry.name : std::string();
  const bool owned = tls_caller_waits && HelpingAllowed(g);
  tls_enqueued_owned = owned;
  Status s = g.queue.Add(std::move(entry), std::move(request), owned);
  if (timed) g.timeline.End(name);
  return s;
}

Request DescribeTensor(const Tensor& t) {
  Request r;
  r.dtype = t.dtype();
  r.shape = t.shape();
  r.device = t.device();
  return r;
}

Status CheckSameSize(const std::string& op, const std::string& name, const Tensor& in, const Tensor& out) {
  if (in.size_bytes() == out.size_bytes() && in.dtype() == out.dtype()) return Status::OK();
  return Status::InvalidArgument(op + " '" + name + "': output tensor (" + DataTypeName(out.dtype()) + ", " +
                                 std::to_string(out.size_bytes()) + " bytes) does not match input (" +
                                 DataTypeName(in.dtype()) + ", " + std::to_string(in.size_bytes()) + " bytes)");
}

}  // namespace

// Set while this thread starts BlueFog (holding lifecycle_mu): an MPI that
// exit()s from inside MPI_Init or another start-up call must not run the exit
// hook's Shutdown, which would wait for that lock forever.
static thread_local bool tls_starting = false;

Status Initialize(bool has_comm, int fortran_comm, const std::string& overrides) {
  if (InForkedChild()) return NotRunning();  // (before the lock: the parent may have held it)
  GlobalState& g = State();
  std::lock_guard<std::mutex> lock(g.lifecycle_mu);
  tls_starting = true;
  struct Started {
    ~Started() { tls_starting = false; }
  } started;
  if (g.running && g.shutdown_requested) {
    // The peers may already have counted this rank's request: it cannot be taken back.
    return Status::PreconditionError(
        "init: an interrupted shutdown() is pending on this rank; call shutdown() again to finish it, then init()");
  }
  if (g.running) return Status::OK();
  if (g.thread.joinable()) g.thread.join();  // a loop that stopped after an error
  ++g.generation;

  auto env = ReadBluefogEnvironment();
  for (const auto& kv : ParseKeyValueLines(overrides)) env[kv.first] = kv.second;
  Config config;
  std::string error;
  Status unparsed;
  if (!ParseConfig(env, &config, &error)) {
    // Not alone: the other ranks would wait at init for this one. It starts
    // MPI with the defaults and tells them (MpiContext::Initialize).
    unparsed = Status::InvalidArgument(error);
    config = Config();
  }
  g.config = config;
  SetLogOptions(config.log_level, config.log_hide_time, -1);

  MPI_Comm base = MPI_COMM_NULL;
  if (has_comm) {  // (not the handle's sign: MPICH's handles of new communicators are negative)
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      return Status::PreconditionError(
          "a communicator was given, but " + MpiLibraryName() +
          " (the MPI BlueFog is built against) is not initialized: initialize it first (importing mpi4py.MPI "
          "does), with an mpi4py built against that same MPI");
    }
    base = MPI_Comm_f2c(fortran_comm);
    if (base == MPI_COMM_NULL) {
      return Status::InvalidArgument("init: the communicator is MPI.COMM_NULL (this process is not in the group "
                                     "BlueFog should run on); call init(comm=...) only where the communicator is valid");
    }
    int inter = 0;
    MPI_Comm_test_inter(base, &inter);
    if (inter) {  // (every rank of it sees the same, so all fail alike)
      return Status::InvalidArgument("init: the communicator is an intercommunicator; BlueFog needs an "
                                     "intracommunicator (e.g. merge it first: comm.Merge())");
    }
  }
  Status s = g.mpi.Initialize(base, config, unparsed);
  static bool exit_hook = false;
  if (!exit_hook) {
    // Last resort if the frontend did not shut down: stop the loop, then MPI
    // (also after an init that failed once BlueFog had started MPI).
    // Registered after MPI_Init, so that it runs before the exit handlers the
    // MPI library registered there (MPICH's processes were killed at exit
    // when it ran after them).
    std::atexit([] {
      if (tls_starting || InForkedChild()) return;
      Shutdown();
      FinalizeMpiIfOwned();
    });
    exit_hook = true;
  }
  if (!s.ok()) return s;
  SetLogOptions(config.log_level, config.log_hide_time, g.mpi.rank());
  BFLOG(DEBUG) << "config " << ConfigToJson(config);

  if (!config.timeline_prefix.empty()) g.timeline.Initialize(config.timeline_prefix + std::to_string(g.mpi.rank()) + ".json");
  g.controller.reset(new MpiController(&g.mpi, &g.timeline));
  g.controller->set_wait_hook([] { State().queue.RunDirect(); });
  g.controller->set_stall_times(config.stall_check_seconds, config.stall_shutdown_seconds);
  // Room for a cycle's requests plus the inline inputs they may carry.
  g.controller->set_max_slot_bytes(1024 + static_cast<size_t>(InlineBudget(g)));
  g.controller->set_ring_bytes(g.config.ring_allreduce_bytes);
  g.controller->set_p2p_gather_ranks(g.config.p2p_gather_ranks);
  g.windows.reset(new WindowManager(&g.mpi, &g.timeline));
  g.windows->set_max_sent_elements(g.config.max_win_sent_length);
  g.coordinator.Reset(g.mpi.size());
  g.fast.Reset();
  g.my_timed_out.clear();
  g.my_deadlocked.clear();
  g.shutdown_requested = false;
  g.loop_failed = false;
  g.loop_error.clear();
  g.skip_negotiate = false;
  g.suspended = false;
  g.loop_done = false;
  g.switches_pending = 0;
  g.last_cycle_moved = false;
  g.running = true;
  g.thread = std::thread(BackgroundLoop);
  return Status::OK();
}

namespace {
// Asks the loop to agree a shutdown with the other ranks (lifecycle_mu held).
void RequestShutdown(GlobalState& g) {
  g.shutdown_requested = true;
  g.suspended = false;
  g.queue.Wake();
}

void ShutdownLocked(GlobalState& g);  // lifecycle_mu held, running
}  // namespace

void Shutdown() {
  if (InForkedChild()) return;  // the parent's BlueFog (its locks may even be held there)
  GlobalState& g = State();
  std::lock_guard<std::mutex> lock(g.lifecycle_mu);
  if (g.running) ShutdownLocked(g);
}

namespace {
void ShutdownLocked(GlobalState& g) {
  RequestShutdown(g);
  if (g.thread.joinable()) g.thread.join();
  if (g.loop_failed) {
    // The loop stopped on a communication failure or an op that could not be
    // cancelled: the other ranks may be waiting for this one in a collective
    // that never completes, and would wait for good once this process ends.
    // End the whole job instead (as an uncaught error does).
    BFLOG(ERROR) << "shutting down after BlueFog's background loop stopped (" << g.loop_error
                 << "): ending the whole job (MPI_Abort), since the other ranks may be waiting for this one";
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  g.queue.FailDirect(Status::Aborted("BlueFog has shut down"));
  g.queue.FailAll(Status::Aborted("BlueFog has shut down"));
  g.controller.reset();
  g.windows.reset();
  g.timeline.Shutdown();
  g.mpi.Finalize();
  g.running = false;
  g.shutdown_requested = false;
}
}  // namespace

bool ShutdownWithin(std::chrono::milliseconds timeout, bool* superseded) {
  *superseded = false;
  if (InForkedChild()) return true;
  GlobalState& g = State();
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(g.lifecycle_mu);
    if (!g.running) return true;
    generation = g.generation;
    if (!g.shutdown_requested) RequestShutdown(g);
  }
  // The loop ends once every rank has asked (or it failed); joining it is then quick.
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!g.loop_done && g.generation == generation) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  std::lock_guard<std::mutex> lock(g.lifecycle_mu);
  // (Another thread may have finished this shutdown meanwhile, and even started anew.)
  if (g.running && g.generation == generation) ShutdownLocked(g);
  *superseded = g.running;
  return true;
}

// (Not in a forked child: BlueFog there is the parent's; rank() and size() still answer.)
bool IsInitialized() { return State().running && !InForkedChild(); }

Status GetBasicInfo(BasicInfo* info) {
  GlobalState& g = State();
  if (!g.running) return Status::PreconditionError("BlueFog is not initialized: call bf.init() first");
  const MpiContext& m = g.mpi;
  *info = BasicInfo{m.rank(),       m.size(),          m.local_rank(),       m.local_size(),
                    m.cross_rank(), m.cross_size(),    m.is_homogeneous(),   m.threads_multiple(),
                    m.unified_window_model()};
  return Status::OK();
}

Status EnqueueAllreduce(std::shared_ptr<Tensor> input, std::shared_ptr<Tensor> output,
                        std::shared_ptr<ReadyEvent> ready, const std::string& name, bool average,
                        bool hierarchical_local, StatusCallback callback, int64_t group_size) {
  Status s = CheckSameSize("allreduce", name, *input, *output);
  if (!s.ok()) return s;
  Request r = DescribeTensor(*input);
  r.average = average;
  r.hierarchical_local = hierarchical_local;
  r.int_arg = group_size;
  TensorTableEntry e;
  e.name = name;
  e.op = OpType::ALLREDUCE;
  e.input = std::move(input);
  e.output = std::move(output);
  e.ready_event = std::move(ready);
  e.average = average;
  e.hierarchical_local = hierarchical_local;
  e.callback = std::move(callback);
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueBroadcast(std::shared_ptr<Tensor> input, std::shared_ptr<Tensor> output,
                        std::shared_ptr<ReadyEvent> ready, const std::string& name, int root_rank,
                        StatusCallback callback) {
  Status s = CheckSameSize("broadcast", name, *input, *output);
  if (!s.ok()) return s;
  Request r = DescribeTensor(*input);
  r.root_rank = root_rank;
  TensorTableEntry e;
  e.name = name;
  e.op = OpType::BROADCAST;
  e.input = std::move(input);
  e.output = std::move(output);
  e.ready_event = std::move(ready);
  e.root_rank = root_rank;
  e.callback = std::move(callback);
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueAllgather(std::shared_ptr<Tensor> input, std::shared_ptr<OpContext> context,
                        std::shared_ptr<ReadyEvent> ready, const std::string& name, StatusCallback callback) {
  Request r = DescribeTensor(*input);
  TensorTableEntry e;
  e.name = name;
  e.op = OpType::ALLGATHER;
  e.input = std::move(input);
  e.context = std::move(context);
  e.ready_event = std::move(ready);
  e.callback = std::move(callback);
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueNeighbor(OpType op, std::shared_ptr<Tensor> input, std::shared_ptr<OpContext> context,
                       std::shared_ptr<ReadyEvent> ready, const std::string& name, std::vector<int32_t> src_ranks,
                       std::vector<int32_t> dst_ranks, std::vector<double> dst_weights, StatusCallback callback,
                       bool topo_check) {
  if (op != OpType::NEIGHBOR_ALLREDUCE && op != OpType::NEIGHBOR_ALLGATHER) {
    return Status::InvalidArgument("EnqueueNeighbor: not a neighbor op");
  }
  if (!dst_weights.empty() && dst_weights.size() != dst_ranks.size()) {
    return Status::InvalidArgument(std::string(OpTypeName(op)) + " '" + name + "': " +
                                   std::to_string(dst_weights.size()) + " weights for " +
                                   std::to_string(dst_ranks.size()) + " destinations");
  }
  Request r = DescribeTensor(*input);
  r.src_ranks = src_ranks;
  r.dst_ranks = dst_ranks;
  r.dst_weights = dst_weights;
  r.topo_check = topo_check;
  TensorTableEntry e;
  e.name = name;
  e.op = op;
  e.input = std::move(input);
  e.context = std::move(context);
  e.ready_event = std::move(ready);
  e.src_ranks = std::move(src_ranks);
  e.dst_ranks = std::move(dst_ranks);
  e.dst_weights = std::move(dst_weights);
  e.int_arg = topo_check ? 1 : 0;
  e.callback = std::move(callback);
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueBarrier(const std::string& name, StatusCallback callback) {
  TensorTableEntry e;
  e.name = name;
  e.op = OpType::BARRIER;
  e.callback = std::move(callback);
  Request r;
  r.shape = {};
  r.dtype = DataType::UINT8;
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueReject(const std::string& op, const std::string& name, const std::string& reason,
                     StatusCallback callback) {
  GlobalState& g = State();
  OpType type = OpType::ALLREDUCE;
  bool known = false;
  for (OpType t : {OpType::ALLREDUCE, OpType::BROADCAST, OpType::ALLGATHER, OpType::NEIGHBOR_ALLREDUCE,
                   OpType::NEIGHBOR_ALLGATHER, OpType::WIN_CREATE}) {
    if (op == OpTypeName(t)) {
      type = t;
      known = true;
    }
  }
  if (!known) return Status::InvalidArgument("reject: unknown op kind '" + op + "'");
  if (name.empty()) return Status::InvalidArgument("reject: the op's name is empty");
  TensorTableEntry e;
  e.name = type == OpType::WIN_CREATE ? kWinCreatePrefix + name : name;  // as EnqueueWinCreate names it
  e.op = type;
  // (The frontend raises its own error.)
  e.callback = callback ? std::move(callback) : StatusCallback([](const Status&) {});
  e.refusal = true;
  Request r;
  r.rejected = reason.empty() ? std::string("invalid input") : reason;
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueSetSkipNegotiate(bool value, StatusCallback callback) {
  TensorTableEntry e;
  e.name = "bluefog.set_skip_negotiate_stage";
  e.op = OpType::SET_SKIP_NEGOTIATE;
  e.int_arg = value ? 1 : 0;
  e.callback = [callback = std::move(callback)](const Status& s) {
    --State().switches_pending;
    if (callback) callback(s);
  };
  Request r;
  r.dtype = DataType::UINT8;
  r.int_arg = e.int_arg;
  GlobalState& g = State();
  ++g.switches_pending;
  Status s = Enqueue(std::move(e), std::move(r));
  if (!s.ok()) --g.switches_pending;  // (refused: the callback never runs)
  return s;
}

bool SkipNegotiate() { return State().skip_negotiate; }

void ExchangeCounts(uint64_t* total, uint64_t* by_callers) {
  *total = State().exchanges;
  *by_callers = State().caller_exchanges;
}

void SkipModeCounts(uint64_t* batches, uint64_t* fused_ops) {
  *batches = State().skip_batches;
  *fused_ops = State().skip_fused_ops;
}

void FastRoundCounts(uint64_t* rounds, uint64_t* agreed) {
  *rounds = State().fast_rounds;
  *agreed = State().fast_agreed;
}

int64_t SpinMicros() { return State().config.spin_time_us; }

int64_t OutputCacheBytes() { return State().config.output_cache_bytes; }

Status EnqueueWinCreate(std::shared_ptr<Tensor> tensor, const std::string& name, bool zero_init,
                        std::vector<int32_t> src_ranks, std::vector<int32_t> dst_ranks, StatusCallback callback) {
  if (name.empty()) return Status::InvalidArgument("win_create: the window needs a name");
  Request r = DescribeTensor(*tensor);
  r.src_ranks = src_ranks;
  r.dst_ranks = dst_ranks;
  r.int_arg = zero_init ? 1 : 0;
  TensorTableEntry e;
  e.name = kWinCreatePrefix + name;
  e.op = OpType::WIN_CREATE;
  e.input = std::move(tensor);
  e.int_arg = r.int_arg;
  e.src_ranks = std::move(src_ranks);
  e.dst_ranks = std::move(dst_ranks);
  e.callback = std::move(callback);
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueWinFree(const std::string& name, StatusCallback callback) {
  TensorTableEntry e;
  e.name = kWinFreePrefix + name;
  e.op = OpType::WIN_FREE;
  e.callback = std::move(callback);
  Request r;
  r.dtype = DataType::UINT8;
  return Enqueue(std::move(e), std::move(r));
}

Status EnqueueDirect(std::function<Status(WindowManager&)> work, StatusCallback callback) {
  GlobalState& g = State();
  if (!g.running || g.shutdown_requested || g.loop_failed || InForkedChild()) return NotRunning();
  // Not owned by a waiting caller: the background thread runs them (and so
  // does any cycle's MPI wait, whoever runs that cycle, as it must so that
  // a mutex release never waits behind an exchange). Run by the caller
  // itself, window ops measured 6-9x slower in some runs of
  // benchmarks/win_bench.py (600-900 us against about 100 us for a 4 KiB put
  // on 4 ranks; not understood, Open MPI's osc/rdma progress is the suspect).
  tls_enqueued_owned = false;
  g.queue.AddDirect(
      [work = std::move(work)] {
        GlobalState& gs = State();
        return gs.windows ? work(*gs.windows) : Status::Aborted("BlueFog has shut down");
      },
      std::move(callback));
  return Status::OK();
}

CallerWaitsScope::CallerWaitsScope(bool on) : previous_(tls_caller_waits) { tls_caller_waits = on; }
CallerWaitsScope::~CallerWaitsScope() { tls_caller_waits = previous_; }

void HelpUntil(const std::function<bool()>& done) {
  GlobalState& g = State();
  if (tls_in_cycle) return;  // a callback waiting inside a cycle: that cycle's thread must go on
  // Whether this thread's last op was a blocking call's (enqueued as owned).
  const bool own_op = tls_enqueued_owned;
  tls_enqueued_owned = false;
  ++g.helpers;
  while (!done() && HelpingAllowed(g)) {
    // Nothing to run now (the peers have not caught up): the background
    // thread paces the next exchanges while this thread sleeps.
    if (ShouldWait(g)) break;
    // Another thread may be running a cycle. A blocking call polls for a
    // while (that cycle may complete its op, or end soon): handing the op
    // back at once made the background thread run the next exchange too, so
    // the caller found it busy again (a rank stuck at two background
    // exchanges per op). Never block on the lock: the running cycle may be
    // waiting for peers that wait for this thread's NEXT op (e.g. a mutex
    // release after the acquire it is running). A wait for nonblocking ops
    // leaves the cycles to that thread (taking turns slowed batches down).
    std::unique_lock<std::mutex> lock(g.cycle_mu, std::try_to_lock);
    if (!lock.owns_lock()) {
      if (!own_op) break;
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(g.config.spin_time_us);
      while (!lock.try_lock() && !done() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
      if (!lock.owns_lock()) break;
    }
    if (done() || !HelpingAllowed(g)) break;
    InCycle in_cycle;
    if (ShouldWait(g)) break;
    ++g.caller_exchanges;
    if (!Exchange(g)) break;  // loop_failed: the background thread stops too
  }
  // Whatever is left (others' ops, or ours still waiting for peers) is the
  // background thread's again; it may be asleep, not counting owned work.
  --g.helpers;
  if (g.running && (g.queue.InFlight() > 0 || g.queue.HasNewRequests())) g.queue.Wake();
}

std::shared_ptr<void> ExternalWait() { return std::make_shared<BlockedWait>(); }

Status RunBlocking(const std::function<Status(StatusCallback)>& enqueue) {
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Status status;
  };
  auto done = std::make_shared<Done>();
  Status s;
  {
    CallerWaitsScope waits(true);
    s = enqueue([done](const Status& st) {
      std::lock_guard<std::mutex> lock(done->mu);
      done->status = st;
      done->done = true;
      done->cv.notify_all();
    });
  }
  if (!s.ok()) return s;
  BlockedWait blocked;
  HelpUntil([&] {
    std::lock_guard<std::mutex> lock(done->mu);
    return done->done;
  });
  std::unique_lock<std::mutex> lock(done->mu);
  done->cv.wait(lock, [&] { return done->done; });
  return done->status;
}

void Abort(int code) {
  if (InForkedChild()) std::_Exit(code);  // the job (MPI, the timeline) is the parent's
  State().timeline.Shutdown();  // writes out the events so far: the trace ends on whole events
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void Suspend() { State().suspended = true; }
void Resume() { State().suspended = false; }

bool TimelineStartActivity(const std::string& name, const std::string& activity) {
  GlobalState& g = State();
  if (!g.timeline.enabled()) return false;
  g.timeline.Start(name, activity);
  return true;
}

bool TimelineEndActivity(const std::string& name) {
  GlobalState& g = State();
  if (!g.timeline.enabled()) return false;
  g.timeline.End(name);
  return true;
}

}  // namespace bluefog
