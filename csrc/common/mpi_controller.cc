#include "mpi_controller.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>
#include <utility>

#include "half.h"
#include "logging.h"

namespace bluefog {

namespace {

constexpr int64_t kMaxChunk = INT_MAX / 2;  // elements per MPI call
constexpr size_t kSlotBytes = 1024;         // smallest negotiation slot per rank
constexpr size_t kSlotHeader = sizeof(uint32_t);
constexpr int kMessageTag = 1;  // AllreduceMessage's point-to-point messages (the control communicator has no others)
constexpr int kMessagePiece = 4000;  // ... sent in pieces of at most this many bytes
constexpr int kMessagePieces = 8;    // ... when there are at most this many
constexpr int kGatherTag = 2;   // AllgatherBytes' point-to-point messages
// The ring allreduce's smallest chunk (bytes per rank): below, its 2 (size - 1)
// steps cost more latency than MPI's own algorithms.
constexpr int64_t kRingMinChunkBytes = 128 * 1024;
// Scratch memory kept after an in-place ring for the next one (larger chunks
// give theirs back at once).
constexpr int64_t kKeepScratchBytes = 64 << 20;
// The ring's tags on the data communicator (neighbor exchanges use 100 and up).
constexpr int kRingReduceTag = 10, kRingGatherTag = 11;

Status CheckRc(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return Status::OK();
  return Status::Aborted(MpiErrorText(call, rc));
}

// Ends the message of a watched wait that failed.
constexpr const char* kStallFailed = " (BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS passed)";

size_t RoundUpToSlot(size_t n) { return (n + kSlotBytes - 1) / kSlotBytes * kSlotBytes; }

}  // namespace

MpiController::MpiController(MpiContext* mpi, Timeline* timeline)
    : mpi_(mpi), timeline_(timeline), slot_bytes_(kSlotBytes), max_slot_bytes_(kSlotBytes) {}

void MpiController::set_max_slot_bytes(size_t bytes) {
  max_slot_bytes_ = std::max(kSlotBytes, RoundUpToSlot(bytes));
  slot_bytes_ = kSlotBytes;
  small_rounds_ = 0;
}

Status MpiController::Wait(MPI_Request* request, const char* what,
                           const std::function<std::string(int)>& stalled) {
  // Three phases: test back to back (the common case: the peers are there, or
  // about to be), then test and yield the core, then back off to short sleeps
  // so that a long wait leaves the cores to the ranks that compute.
  // With Open MPI the first phase yields nothing itself: its progress already
  // yields inside MPI_Test when it finds nothing to do on an oversubscribed
  // node, and a second yield after every test doubled the context switches of
  // a 4 KiB allreduce on 4 ranks sharing 2 cores (8.3 yields and 6.3 switches
  // per op and rank, against 3.5 and 2.5 for MPI's own blocking allreduce).
  // MPICH's MPI_Test does not yield: there, 30 us of back-to-back tests kept
  // the peers off the cores (a 4 KiB allreduce 30-37 -> 80-93 us), so it yields
  // after every test from the start.
#if defined(OPEN_MPI)
  constexpr auto kTestOnly = std::chrono::microseconds(30);
#else
  constexpr auto kTestOnly = std::chrono::microseconds(0);
#endif
  constexpr auto kYielding = std::chrono::milliseconds(2);
  int done = 0;
  auto start = std::chrono::steady_clock::now();
  int64_t sleep_us = 0;
  const bool watched = stalled && Watching();
  double next_warn = watch_warn_seconds_;
  while (true) {
    int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return Status::Aborted(MpiErrorText(what, rc));
    if (done) return Status::OK();
    if (wait_hook_) wait_hook_();
    auto waited = std::chrono::steady_clock::now() - start;
    if (waited < kTestOnly) continue;
    if (waited < kYielding) {
      std::this_thread::yield();
      continue;
    }
    if (watched) {
      const double secs = std::chrono::duration<double>(waited).count();
      const Stall verdict = CheckStall(secs, &next_warn);
      if (verdict != Stall::kQuiet) {
        std::string text = stalled(static_cast<int>(secs));
        // A collective cannot be cancelled: the loop stops after this error.
        if (verdict == Stall::kFail) return Status::Aborted(text + kStallFailed);
        BFLOG(WARNING) << text;
      }
    }
    sleep_us = std::min<int64_t>(sleep_us == 0 ? 10 : sleep_us * 2, 500);
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  }
}

Status MpiController::AllgatherBytes(const std::string& mine, std::vector<std::string>* all) {
  const int size = mpi_->size();
  const size_t slot = slot_bytes_;
  slots_.resize(slot * (size + 1));
  char* send = slots_.data() + slot * size;
  uint32_t len = static_cast<uint32_t>(mine.size());
  std::memcpy(send, &len, kSlotHeader);
  size_t first = std::min(mine.size(), slot - kSlotHeader);
  std::memcpy(send + kSlotHeader, mine.data(), first);
  MPI_Request req;
  int rc = MPI_SUCCESS;
  Status s = Status::OK();
  if (size <= p2p_gather_ranks_) {
    s = GatherSlots(send, slot);
  } else {
    rc = MPI_Iallgather(send, static_cast<int>(slot), MPI_BYTE, slots_.data(), static_cast<int>(slot), MPI_BYTE,
                        mpi_->control_comm(), &req);
    if (rc != MPI_SUCCESS) return Status::Aborted(MpiErrorText("MPI_Iallgather", rc));
    s = Wait(&req, "MPI_Iallgather");
  }
  if (!s.ok()) return s;

  all->resize(size);  // assign() below keeps each string's memory from the last round
  std::vector<int>& rest = rest_;
  std::vector<int>& displs = displs_;
  rest.assign(size, 0);
  displs.assign(size, 0);
  int total_rest = 0;
  size_t longest = 0;
  for (int r = 0; r < size; ++r) {
    const char* from = slots_.data() + slot * r;
    uint32_t n;
    std::memcpy(&n, from, kSlotHeader);
    size_t here = std::min<size_t>(n, slot - kSlotHeader);
    (*all)[r].assign(from + kSlotHeader, here);
    rest[r] = static_cast<int>(n - here);
    displs[r] = total_rest;
    total_rest += rest[r];
    longest = std::max<size_t>(longest, n + kSlotHeader);
  }
  // Next round's slot: grow at once to fit, shrink (halving) only after many
  // rounds that would fit a quarter of it. Every rank computes the same.
  if (longest > slot_bytes_) {
    slot_bytes_ = std::min(max_slot_bytes_, RoundUpToSlot(longest));
    small_rounds_ = 0;
  } else if (slot_bytes_ > kSlotBytes && longest * 4 <= slot_bytes_) {
    if (++small_rounds_ >= 64) {
      slot_bytes_ = std::max(kSlotBytes, RoundUpToSlot(slot_bytes_ / 2));
      small_rounds_ = 0;
    }
  } else {
    small_rounds_ = 0;
  }
  if (total_rest == 0) return Status::OK();
  // Long messages: the remainder in a second round (every rank knows it is needed).
  std::vector<char> recv(total_rest);
  const int my_rest = rest[mpi_->rank()];
  rc = MPI_Iallgatherv(mine.data() + first, my_rest, MPI_BYTE, recv.data(), rest.data(), displs.data(),
                       MPI_BYTE, mpi_->control_comm(), &req);
  if (rc != MPI_SUCCESS) return Status::Aborted(MpiErrorText("MPI_Iallgatherv", rc));
  s = Wait(&req, "MPI_Iallgatherv");
  if (!s.ok()) return s;
  for (int r = 0; r < size; ++r) (*all)[r].append(recv.data() + displs[r], rest[r]);
  return Status::OK();
}

Status MpiController::PostPieces(const char* send, char* recv, int bytes, int peer, int tag) {
  // A small message goes as pieces that each fit an eager message (Open MPI's
  // shared-memory eager limit is 4 KiB, its header included): a 4 KiB op's
  // 4224-byte fast-round message as one message took the rendezvous path, a
  // process_vm_readv and an acknowledgement, 4.2 us a round on 2 ranks
  // against 2.3 us in two pieces (C loops).
  const int piece = bytes <= kMessagePiece * kMessagePieces ? kMessagePiece : bytes;
  MPI_Comm comm = mpi_->control_comm();
  int rc = MPI_SUCCESS;
  for (int at = 0; recv && at < bytes && rc == MPI_SUCCESS; at += piece) {
    pieces_.emplace_back();
    rc = MPI_Irecv(recv + at, std::min(piece, bytes - at), MPI_BYTE, peer, tag, comm, &pieces_.back());
  }
  for (int at = 0; send && at < bytes && rc == MPI_SUCCESS; at += piece) {
    pieces_.emplace_back();
    rc = MPI_Isend(send + at, std::min(piece, bytes - at), MPI_BYTE, peer, tag, comm, &pieces_.back());
  }
  if (rc == MPI_SUCCESS) return Status::OK();
  pieces_.clear();  // (the loop stops: nothing waits for the pieces posted so far)
  return Status::Aborted(MpiErrorText("MPI_Isend/MPI_Irecv (negotiation)", rc));
}

Status MpiController::WaitPieces() {
  Status s = Status::OK();
  for (MPI_Request& req : pieces_) {
    s = Wait(&req, "MPI_Isend/MPI_Irecv (negotiation)");
    if (!s.ok()) break;
  }
  pieces_.clear();
  return s;
}

Status MpiController::GatherSlots(const char* send, size_t slot) {
  // Every rank's slot straight to every other rank (PostPieces). Against Open
  // MPI's MPI_Iallgather (libnbc: the same messages, but whole, so a slot over
  // 4 KiB takes the rendezvous path, and run by its schedule engine): 10-16 us
  // against 18-31 for 4224-byte slots on 4 ranks sharing 2 cores, 1.6 against
  // 3.2 us on 2 ranks (C loops).
  const int size = mpi_->size();
  const int rank = mpi_->rank();
  const int bytes = static_cast<int>(slot);
  Status s = Status::OK();
  for (int k = 1; k < size && s.ok(); ++k) {
    const int peer = (rank + k) % size;
    s = PostPieces(nullptr, slots_.data() + slot * peer, bytes, peer, kGatherTag);
  }
  for (int k = 1; k < size && s.ok(); ++k) {
    s = PostPieces(send, nullptr, bytes, (rank + size - k) % size, kGatherTag);
  }
  if (!s.ok()) return s;
  std::memcpy(slots_.data() + slot * rank, send, slot);
  return WaitPieces();
}

Status MpiController::AllreduceMessage(std::vector<char>* buf, void (*reduce)(const char*, char*, size_t)) {
  // Recursive doubling over point-to-point messages (PostPieces), combined
  // here with `reduce`. Open MPI's nonblocking and persistent allreduce
  // (libnbc) reduces a small in-place message to rank 0 and broadcasts it
  // back (twice the steps): 6.6 us a round against 3.0 for this on 2 ranks
  // (4 KiB plus the header, in a C loop). MPI's blocking allreduce is no
  // option: this thread runs BlueFog's direct ops while it waits. Both
  // partners of a step compute `reduce` of the same two messages,
  // commutative, so every rank ends with the same bytes.
  const int size = mpi_->size();
  if (size == 1) return Status::OK();
  message_in_.resize(buf->size());
  const int rank = mpi_->rank();
  const size_t bytes = buf->size();
  char* mine = buf->data();
  char* theirs = message_in_.data();
  // Sends `send` (or nothing) to `peer` while receiving into `recv` (or not).
  auto exchange = [&](const char* send, char* recv, int peer) -> Status {
    Status s = PostPieces(send, recv, static_cast<int>(bytes), peer, kMessageTag);
    return s.ok() ? WaitPieces() : s;
  };
  // Beyond the largest power of two `pof2`: the first 2 * extra ranks pair
  // up; the even one hands its message to the odd one, which takes part in
  // the doubling, and gets the result back at the end.
  int pof2 = 1;
  while (pof2 * 2 <= size) pof2 *= 2;
  const int extra = size - pof2;
  if (rank < 2 * extra && rank % 2 == 0) {
    Status s = exchange(mine, nullptr, rank + 1);
    return s.ok() ? exchange(nullptr, mine, rank + 1) : s;
  }
  if (rank < 2 * extra) {
    Status s = exchange(nullptr, theirs, rank - 1);
    if (!s.ok()) return s;
    reduce(theirs, mine, bytes);
  }
  const int vrank = rank < 2 * extra ? rank / 2 : rank - extra;
  for (int mask = 1; mask < pof2; mask <<= 1) {
    const int vpeer = vrank ^ mask;
    const int peer = vpeer < extra ? vpeer * 2 + 1 : vpeer + extra;
    Status s = exchange(mine, theirs, peer);
    if (!s.ok()) return s;
    reduce(theirs, mine, bytes);
  }
  if (rank < 2 * extra) return exchange(mine, nullptr, rank - 1);
  return Status::OK();
}

bool MpiController::UseRing(int64_t bytes, MPI_Comm comm) const {
  if (ring_bytes_ <= 0 || bytes < ring_bytes_) return false;
  int size = 1;
  MPI_Comm_size(comm, &size);
  // Each chunk's element count (bytes / size elements at most, for 1-byte
  // types) within kMaxChunk, so it fits MPI's int count.
  return size > 1 && bytes / size >= kRingMinChunkBytes && bytes / size + 1 < kMaxChunk;
}

Status MpiController::AllreduceSum(const void* in, void* out, int64_t count, DataType dtype, MPI_Comm comm,
                                   double scale, bool ring) {
  if (ring) return RingAllreduce(in, out, count, dtype, comm, scale);
  MPI_Datatype type = mpi_->MpiType(dtype);
  MPI_Op op = mpi_->SumOp(dtype);
  const size_t elem = DataTypeSize(dtype);
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  for (int64_t done = 0; done < count;) {
    int n = static_cast<int>(std::min(count - done, kMaxChunk));
    const void* from = in == out ? MPI_IN_PLACE : src + done * elem;
    Status s = CheckRc(MPI_Allreduce(from, dst + done * elem, n, type, op, comm), "MPI_Allreduce");
    if (!s.ok()) return s;
    done += n;
  }
  if (scale != 1.0) ScaleBuffer(dtype, out, count, scale);
  return Status::OK();
}

// A ring allreduce (reduce-scatter, then allgather, one chunk per rank and
// step, each rank sending to the next). Measured on 4 ranks sharing 2 cores,
// 16 MiB: out of place 8-9 ms against 13 for MPI's own out-of-place allreduce
// (Open MPI 5; MPICH 15-17 ms), which, like a copy followed by the in-place
// one, costs a pass over memory more; in place about 10% faster than MPI's.
// Out of place the reduce-scatter sums each received chunk with the input's
// into the output (out = in + received), so the input is read once and never
// copied; in place it receives into one chunk of scratch memory. The average
// scales only the chunk this rank finishes, before the allgather. Every rank
// ends with the same bits (each chunk is summed on one path, then copied).
Status MpiController::RingAllreduce(const void* in, void* out, int64_t count, DataType dtype, MPI_Comm comm,
                                    double scale) {
  MPI_Datatype type = mpi_->MpiType(dtype);
  MPI_Op op = mpi_->SumOp(dtype);
  const size_t elem = DataTypeSize(dtype);
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const int right = (rank + 1) % size, left = (rank + size - 1) % size;
  auto chunk = [&](int k) {  // chunk k: [lo(k), lo(k + 1)), as (first element, count)
    k = ((k % size) + size) % size;
    const int64_t lo = count * k / size, hi = count * (k + 1) / size;
    return std::make_pair(lo, hi - lo);
  };
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  char* tmp = nullptr;
  if (in == out) {
    tmp = scratch_.Reserve(static_cast<size_t>((count / size + 1) * static_cast<int64_t>(elem)));
    if (tmp == nullptr) return Status::Aborted("out of memory for the ring allreduce's scratch chunk");
  }
  // One step: send chunk `send_k` of `send_base` to the right, receive chunk
  // `recv_k` from the left (into `recv_to`, or else its place in the output).
  auto step = [&](const char* send_base, int send_k, int recv_k, int tag, char* recv_to) -> Status {
    auto [s_at, s_n] = chunk(send_k);
    auto [r_at, r_n] = chunk(recv_k);
    MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    Status s = CheckRc(MPI_Irecv(recv_to ? recv_to : dst + r_at * elem, static_cast<int>(r_n), type, left, tag, comm,
                                 &reqs[0]), "MPI_Irecv");
    if (s.ok()) {
      s = CheckRc(MPI_Isend(send_base + s_at * elem, static_cast<int>(s_n), type, right, tag, comm, &reqs[1]),
                  "MPI_Isend");
    }
    if (s.ok()) s = Wait(&reqs[0], "MPI_Irecv (ring allreduce)");
    if (s.ok()) s = Wait(&reqs[1], "MPI_Isend (ring allreduce)");
    if (!s.ok()) {
      // The op fails and its tensors go: a receive still posted must not land
      // in freed memory later (cancelled), a send only reads (let go).
      if (reqs[0] != MPI_REQUEST_NULL) {
        MPI_Cancel(&reqs[0]);
        MPI_Wait(&reqs[0], MPI_STATUS_IGNORE);
      }
      if (reqs[1] != MPI_REQUEST_NULL) MPI_Request_free(&reqs[1]);
    }
    return s;
  };
  for (int s = 0; s < size - 1; ++s) {  // reduce-scatter
    Status st = step(s == 0 ? src : dst, rank - s, rank - s - 1, kRingReduceTag, tmp);
    if (!st.ok()) return st;
    auto [at, n] = chunk(rank - s - 1);
    st = CheckRc(MPI_Reduce_local(tmp ? tmp : src + at * elem, dst + at * elem, static_cast<int>(n), type, op),
                 "MPI_Reduce_local");
    if (!st.ok()) return st;
    if (s == size - 2 && scale != 1.0) ScaleBuffer(dtype, dst + at * elem, n, scale);
  }
  if (tmp != nullptr && count * static_cast<int64_t>(elem) / size > kKeepScratchBytes) scratch_.Release();
  for (int s = 0; s < size - 1; ++s) {  // allgather: this rank holds chunk rank + 1, summed
    Status st = step(dst, rank + 1 - s, rank - s, kRingGatherTag, nullptr);
    if (!st.ok()) return st;
  }
  return Status::OK();
}

Status MpiController::Allreduce(std::vector<TensorTableEntry>& entries) {
  const TensorTableEntry& first = entries[0];
  const DataType dtype = first.input->dtype();
  const size_t elem = DataTypeSize(dtype);
  MPI_Comm comm = first.hierarchical_local ? mpi_->local_comm() : mpi_->data_comm();
  const int group = first.hierarchical_local ? mpi_->local_size() : mpi_->size();
  const double scale = 1.0 / group;

  if (entries.size() == 1) {
    TensorTableEntry& e = entries[0];
    int64_t count = e.input->size_bytes() / static_cast<int64_t>(elem);
    const bool ring = UseRing(e.input->size_bytes(), comm);
    timeline_->Start(e.name, ring ? "COMMUNICATE_RING" : "COMMUNICATE");
    Status s = AllreduceSum(e.input->data(), e.output->data(), count, dtype, comm, e.average ? scale : 1.0, ring);
    timeline_->End(e.name);
    return s;
  }

  int64_t total = 0;
  for (auto& e : entries) total += e.input->size_bytes();
  char* buffer = fusion_.Reserve(static_cast<size_t>(total));
  if (buffer == nullptr) return Status::Aborted("out of memory for the fusion buffer");
  int64_t offset = 0;
  for (auto& e : entries) {
    timeline_->Start(e.name, "MEMCPY_IN_FUSION_BUFFER");
    if (e.input->size_bytes() > 0) std::memcpy(buffer + offset, e.input->data(), e.input->size_bytes());
    offset += e.input->size_bytes();
    timeline_->End(e.name);
  }
  const bool ring = UseRing(total, comm);
  for (auto& e : entries) timeline_->Start(e.name, ring ? "COMMUNICATE_RING" : "COMMUNICATE");
  Status s = AllreduceSum(buffer, buffer, total / static_cast<int64_t>(elem), dtype, comm, first.average ? scale : 1.0,
                          ring);
  for (auto& e : entries) timeline_->End(e.name);
  if (!s.ok()) return s;
  offset = 0;
  for (auto& e : entries) {
    timeline_->Start(e.name, "MEMCPY_OUT_FUSION_BUFFER");
    if (e.input->size_bytes() > 0) std::memcpy(e.output->data(), buffer + offset, e.input->size_bytes());
    offset += e.input->size_bytes();
    timeline_->End(e.name);
  }
  return Status::OK();
}

Status MpiController::Broadcast(TensorTableEntry& e) {
  const bool root = mpi_->rank() == e.root_rank;
  if (root && e.output->data() != e.input->data() && e.input->size_bytes() > 0) {
    std::memcpy(e.output->data(), e.input->data(), e.input->size_bytes());
  }
  const DataType dtype = e.input->dtype();
  const size_t elem = DataTypeSize(dtype);
  int64_t count = e.output->size_bytes() / static_cast<int64_t>(elem);
  char* p = static_cast<char*>(e.output->data());
  timeline_->Start(e.name, "COMMUNICATE");
  Status s;
  for (int64_t done = 0; done < count && s.ok();) {
    int n = static_cast<int>(std::min(count - done, kMaxChunk));
    s = CheckRc(MPI_Bcast(p + done * elem, n, mpi_->MpiType(dtype), e.root_rank, mpi_->data_comm()), "MPI_Bcast");
    done += n;
  }
  timeline_->End(e.name);
  return s;
}

Status MpiController::Allgather(TensorTableEntry& e, std::vector<int64_t> first_dims) {
  const int size = mpi_->size();
  const Shape& in_shape = e.input->shape();
  int64_t my_first = in_shape.empty() ? 1 : in_shape[0];
  if (first_dims.empty()) {
    first_dims.resize(size);
    Status s = CheckRc(MPI_Allgather(&my_first, 1, MPI_INT64_T, first_dims.data(), 1, MPI_INT64_T,
                                     mpi_->data_comm()),
                       "MPI_Allgather");
    if (!s.ok()) return s;
  }
  int64_t row_elems = 1;
  for (size_t i = 1; i < in_shape.size(); ++i) row_elems *= in_shape[i];
  const int64_t row_bytes = row_elems * static_cast<int64_t>(DataTypeSize(e.input->dtype()));
  int64_t total_rows = 0;
  std::vector<int> counts(size), displs(size);
  for (int r = 0; r < size; ++r) {
    if (first_dims[r] > INT_MAX || total_rows > INT_MAX) {
      return Status::InvalidArgument("allgather '" + e.name + "': more than INT_MAX rows are not supported");
    }
    counts[r] = static_cast<int>(first_dims[r]);
    displs[r] = static_cast<int>(total_rows);
    total_rows += first_dims[r];
  }
  Shape out_shape = in_shape.empty() ? Shape{total_rows} : in_shape;
  if (!out_shape.empty()) out_shape[0] = total_rows;
  Status s = e.context->AllocateOutput(out_shape, &e.output);
  if (!s.ok()) return s;
  if (row_bytes == 0 || total_rows == 0) return Status::OK();

  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row);
  MPI_Type_commit(&row);
  timeline_->Start(e.name, "COMMUNICATE");
  s = CheckRc(MPI_Allgatherv(e.input->data(), static_cast<int>(my_first), row, e.output->data(), counts.data(),
                             displs.data(), row, mpi_->data_comm()),
              "MPI_Allgatherv");
  timeline_->End(e.name);
  MPI_Type_free(&row);
  return s;
}

int MpiController::NextNeighborTag() {
  // MPI guarantees tags up to 32767: 100 + 2 * 16000 stays below.
  constexpr uint32_t kTags = 16000;
  return 100 + 2 * static_cast<int>(neighbor_exchanges_++ % kTags);
}

MpiController::Stall MpiController::CheckStall(double seconds, double* next_warn) const {
  if (watch_fail_seconds_ > 0 && seconds >= watch_fail_seconds_) return Stall::kFail;
  if (watch_warn_seconds_ <= 0 || seconds < *next_warn) return Stall::kQuiet;
  *next_warn = seconds + watch_warn_seconds_;
  return Stall::kWarn;
}

Status MpiController::WaitNeighbors(const std::string& name, OpType op, std::vector<MPI_Request>& reqs,
                                    const std::vector<int32_t>& src, const std::vector<int32_t>& dst) {
  const int n = static_cast<int>(reqs.size());
  if (!watch_neighbors_ || !Watching()) {
    return CheckRc(MPI_Waitall(n, reqs.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
  }
  const auto start = std::chrono::steady_clock::now();
  double next_warn = watch_warn_seconds_;
  while (true) {
    int done = 0;
    int rc = MPI_Testall(n, reqs.data(), &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) return Status::Aborted(MpiErrorText("MPI_Testall", rc));
    if (done) return Status::OK();
#if !defined(OPEN_MPI)
    std::this_thread::yield();  // MPICH's MPI_Test does not yield (see Wait)
#endif
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const Stall verdict = CheckStall(waited, &next_warn);
    if (verdict == Stall::kQuiet) continue;
    std::string from, to;  // the peers whose messages are still pending
    for (int i = 0; i < n; ++i) {
      int one = 0;
      if (reqs[i] != MPI_REQUEST_NULL) MPI_Test(&reqs[i], &one, MPI_STATUS_IGNORE);
      if (reqs[i] == MPI_REQUEST_NULL) continue;
      std::string& list = i < static_cast<int>(src.size()) ? from : to;
      list += (list.empty() ? "" : ", ") + std::to_string(i < static_cast<int>(src.size()) ? src[i] : dst[i - src.size()]);
    }
    std::string what = std::string(OpTypeName(op)) + " '" + name + "' has waited " +
                       std::to_string(static_cast<int>(waited)) + " s for its messages";
    if (!from.empty()) what += "; nothing yet from ranks [" + from + "]";
    if (!to.empty()) what += "; not yet received by ranks [" + to + "]";
    what += ". In skip-negotiate mode the send/receive pattern is not checked (enable_topo_check=False): "
            "does every rank that this rank receives from send to it, and the other way round?";
    if (verdict == Stall::kFail) {
      // The op fails and its tensors go: a late message must not land in a
      // freed output. Receives still posted are cancelled (sends only read).
      for (int i = 0; i < static_cast<int>(src.size()) && i < n; ++i) {
        if (reqs[i] == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&reqs[i]);
        MPI_Wait(&reqs[i], MPI_STATUS_IGNORE);
      }
      for (int i = static_cast<int>(src.size()); i < n; ++i)
        if (reqs[i] != MPI_REQUEST_NULL) MPI_Request_free(&reqs[i]);
      return Status::Aborted(what + kStallFailed);
    }
    BFLOG(WARNING) << what;
  }
}

Status MpiController::NeighborExchange(TensorTableEntry& e, const std::vector<int64_t>& first_dims) {
  const int data_tag = NextNeighborTag(), size_tag = data_tag + 1;
  MPI_Comm comm = mpi_->data_comm();
  const bool gather = e.op == OpType::NEIGHBOR_ALLGATHER;
  const Shape& in_shape = e.input->shape();
  const auto& src = e.src_ranks;
  const auto& dst = e.dst_ranks;
  const int64_t in_bytes = e.input->size_bytes();
  if (in_bytes > INT_MAX) {
    return Status::InvalidArgument(std::string(OpTypeName(e.op)) + " '" + e.name +
                                   "': tensors over 2 GiB are not supported by neighbor ops");
  }
  std::vector<MPI_Request> reqs;
  reqs.reserve(2 * (src.size() + dst.size()));

  // Bytes expected from each source.
  std::vector<int64_t> src_bytes(src.size(), in_bytes);
  Shape out_shape;
  if (gather) {
    int64_t my_first = in_shape.empty() ? 1 : in_shape[0];
    int64_t row_bytes = my_first > 0 ? in_bytes / my_first : 0;
    if (my_first == 0) {
      row_bytes = static_cast<int64_t>(DataTypeSize(e.input->dtype()));
      for (size_t i = 1; i < in_shape.size(); ++i) row_bytes *= in_shape[i];
    }
    std::vector<int64_t> rows(src.size());
    if (!first_dims.empty()) {
      for (size_t i = 0; i < src.size(); ++i) rows[i] = first_dims[src[i]];
    } else {
      for (size_t i = 0; i < src.size(); ++i) {
        reqs.emplace_back();
        MPI_Irecv(&rows[i], 1, MPI_INT64_T, src[i], size_tag, comm, &reqs.back());
      }
      for (int32_t d : dst) {
        reqs.emplace_back();
        MPI_Isend(&my_first, 1, MPI_INT64_T, d, size_tag, comm, &reqs.back());
      }
      Status s = WaitNeighbors(e.name, e.op, reqs, src, dst);
      if (!s.ok()) return s;
      reqs.clear();
    }
    int64_t total = 0;
    for (size_t i = 0; i < src.size(); ++i) {
      src_bytes[i] = rows[i] * row_bytes;
      total += rows[i];
    }
    out_shape = in_shape.empty() ? Shape{total} : in_shape;
    out_shape[0] = total;
  } else {
    out_shape.push_back(static_cast<int64_t>(src.size()));
    out_shape.insert(out_shape.end(), in_shape.begin(), in_shape.end());
  }
  Status s = e.context->AllocateOutput(out_shape, &e.output);
  if (!s.ok()) return s;

  // Scaled copies for destinations whose weight is not 1.
  const int64_t count = in_bytes / static_cast<int64_t>(DataTypeSize(e.input->dtype()));
  std::vector<const char*> send_from(dst.size(), static_cast<const char*>(e.input->data()));
  size_t scaled = 0;
  for (size_t i = 0; i < dst.size(); ++i)
    if (!e.dst_weights.empty() && e.dst_weights[i] != 1.0) ++scaled;
  if (scaled > 0) {
    // Keep each copy off the input's page offset (see FusionBuffer).
    const size_t stride = (static_cast<size_t>(in_bytes) + 4095) / 4096 * 4096 + 320;
    char* scratch = scratch_.Reserve(stride * dst.size());
    if (scratch == nullptr) return Status::Aborted("out of memory for the scaled copies of " + e.name + "'s input");
    for (size_t i = 0; i < dst.size(); ++i) {
      if (e.dst_weights.empty() || e.dst_weights[i] == 1.0) continue;
      char* copy = scratch + stride * i;
      if (in_bytes > 0) std::memcpy(copy, e.input->data(), in_bytes);
      ScaleBuffer(e.input->dtype(), copy, count, e.dst_weights[i]);
      send_from[i] = copy;
    }
  }
  timeline_->Start(e.name, "COMMUNICATE");
  char* out = static_cast<char*>(e.output->data());
  int64_t offset = 0;
  for (size_t i = 0; i < src.size(); ++i) {
    if (src_bytes[i] > INT_MAX) {
      timeline_->End(e.name);
      return Status::InvalidArgument(std::string(OpTypeName(e.op)) + " '" + e.name + "': more than 2 GiB from one neighbor");
    }
    reqs.emplace_back();
    MPI_Irecv(out + offset, static_cast<int>(src_bytes[i]), MPI_BYTE, src[i], data_tag, comm, &reqs.back());
    offset += src_bytes[i];
  }
  for (size_t i = 0; i < dst.size(); ++i) {
    reqs.emplace_back();
    MPI_Isend(send_from[i], static_cast<int>(in_bytes), MPI_BYTE, dst[i], data_tag, comm, &reqs.back());
  }
  s = WaitNeighbors(e.name, e.op, reqs, src, dst);
  timeline_->End(e.name);
  return s;
}

Status MpiController::NeighborAllreduceFused(std::vector<TensorTableEntry>& entries) {
  if (entries.size() == 1) return NeighborExchange(entries[0], {});
  const int data_tag = NextNeighborTag();
  MPI_Comm comm = mpi_->data_comm();
  const auto& src = entries[0].src_ranks;
  const auto& dst = entries[0].dst_ranks;
  const auto& weights = entries[0].dst_weights;
  const DataType dtype = entries[0].input->dtype();
  int64_t total = 0;
  for (auto& e : entries) total += e.input->size_bytes();
  if (total > INT_MAX) return Status::InvalidArgument("fused neighbor_allreduce over 2 GiB");
  // Regions: packed input | one scaled copy per weighted destination | one
  // receive region per source. Strides keep regions off each other's page
  // offset (and are a multiple of 64 bytes, so of every element size). The
  // receive regions are a buffer of the frontend's when it has one: each op's
  // output is then a view into it, and nothing is copied out.
  const size_t stride = (static_cast<size_t>(total) + 4095) / 4096 * 4096 + 320;
  const int64_t elem = static_cast<int64_t>(DataTypeSize(dtype));
  std::vector<int> scaled_slot(dst.size(), -1);
  int n_scaled = 0;
  for (size_t i = 0; i < dst.size(); ++i)
    if (!weights.empty() && weights[i] != 1.0) scaled_slot[i] = n_scaled++;
  std::shared_ptr<Tensor> shared;
  if (!src.empty() && elem > 0) shared = entries[0].context->SharedBuffer(static_cast<int64_t>(stride / elem * src.size()));
  char* base = fusion_.Reserve(stride * (1 + n_scaled + (shared ? 0 : src.size())));
  if (base == nullptr) return Status::Aborted("out of memory for the fusion buffer of " + entries[0].name + " and the ops fused with it");
  char* packed = base;
  int64_t offset = 0;
  for (auto& e : entries) {
    timeline_->Start(e.name, "MEMCPY_IN_FUSION_BUFFER");
    if (e.input->size_bytes() > 0) std::memcpy(packed + offset, e.input->data(), e.input->size_bytes());
    offset += e.input->size_bytes();
    timeline_->End(e.name);
  }
  const int64_t count = total / static_cast<int64_t>(DataTypeSize(dtype));
  for (size_t i = 0; i < dst.size(); ++i) {
    if (scaled_slot[i] < 0) continue;
    char* copy = base + stride * (1 + scaled_slot[i]);
    std::memcpy(copy, packed, total);
    ScaleBuffer(dtype, copy, count, weights[i]);
  }
  char* recv = shared ? static_cast<char*>(shared->data()) : base + stride * (1 + n_scaled);
  std::vector<MPI_Request> reqs;
  for (auto& e : entries) timeline_->Start(e.name, "COMMUNICATE");
  for (size_t i = 0; i < src.size(); ++i) {
    reqs.emplace_back();
    MPI_Irecv(recv + stride * i, static_cast<int>(total), MPI_BYTE, src[i], data_tag, comm, &reqs.back());
  }
  for (size_t i = 0; i < dst.size(); ++i) {
    const char* from = scaled_slot[i] < 0 ? packed : base + stride * (1 + scaled_slot[i]);
    reqs.emplace_back();
    MPI_Isend(from, static_cast<int>(total), MPI_BYTE, dst[i], data_tag, comm, &reqs.back());
  }
  Status s = WaitNeighbors(entries[0].name, OpType::NEIGHBOR_ALLREDUCE, reqs, src, dst);
  for (auto& e : entries) timeline_->End(e.name);
  if (!s.ok()) return s;
  offset = 0;
  for (auto& e : entries) {
    const int64_t bytes = e.input->size_bytes();
    Shape out_shape{static_cast<int64_t>(src.size())};
    out_shape.insert(out_shape.end(), e.input->shape().begin(), e.input->shape().end());
    if (!shared || !e.context->ViewOutput(shared, offset / elem, static_cast<int64_t>(stride) / elem, out_shape,
                                          &e.output)) {
      s = e.context->AllocateOutput(out_shape, &e.output);
      if (!s.ok()) return s;
      char* out = static_cast<char*>(e.output->data());
      for (size_t i = 0; i < src.size(); ++i) {
        if (bytes > 0) std::memcpy(out + bytes * i, recv + stride * i + offset, bytes);
      }
    }
    offset += bytes;
  }
  return Status::OK();
}

Status MpiController::AllgatherLists(const std::vector<int32_t>& mine, std::vector<std::vector<int32_t>>* all) {
  const int size = mpi_->size();
  int n = static_cast<int>(mine.size());
  std::vector<int> counts(size), displs(size);
  Status s = CheckRc(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, mpi_->data_comm()), "MPI_Allgather");
  if (!s.ok()) return s;
  int total = 0;
  for (int r = 0; r < size; ++r) {
    displs[r] = total;
    total += counts[r];
  }
  std::vector<int32_t> flat(std::max(total, 1));
  s = CheckRc(MPI_Allgatherv(mine.data(), n, MPI_INT32_T, flat.data(), counts.data(), displs.data(), MPI_INT32_T,
                             mpi_->data_comm()),
              "MPI_Allgatherv");
  if (!s.ok()) return s;
  all->assign(size, {});
  for (int r = 0; r < size; ++r) (*all)[r].assign(flat.begin() + displs[r], flat.begin() + displs[r] + counts[r]);
  return Status::OK();
}

Status MpiController::Barrier() { return CheckRc(MPI_Barrier(mpi_->data_comm()), "MPI_Barrier"); }

Status MpiController::SkipModeAgreement(uint64_t* words, int n, OpType op, const std::string& name) {
  MPI_Request req;
  Status s = CheckRc(MPI_Iallreduce(MPI_IN_PLACE, words, n, MPI_UINT64_T, MPI_BAND, mpi_->data_comm(), &req),
                     "MPI_Iallreduce");
  if (!s.ok()) return s;
  return Wait(&req, "MPI_Iallreduce", [&](int seconds) {
    return std::string(OpTypeName(op)) + " '" + name + "' has waited " + std::to_string(seconds) +
           " s for every rank to reach it in skip-negotiate mode, where every rank must submit the same ops in "
           "the same order (a rank that never submits it leaves the others waiting)";
  });
}

}  // namespace bluefog
