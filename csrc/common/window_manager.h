// One-sided windows: for each named window every rank keeps one receive
// buffer per in-neighbor, and MPI RMA lets its in-neighbors write into (put,
// accumulate) their own buffer there without this rank taking part. Every
// method runs on the core's background thread.
#ifndef BLUEFOG_COMMON_WINDOW_MANAGER_H
#define BLUEFOG_COMMON_WINDOW_MANAGER_H

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fusion_buffer.h"
#include "mpi_context.h"
#include "status.h"
#include "tensor.h"
#include "timeline.h"

namespace bluefog {

struct WinOpArgs {
  std::string name;
  std::shared_ptr<Tensor> tensor;  // put/accumulate: the data sent
  std::vector<int32_t> ranks;      // destinations (put/accumulate) or sources (get)
  std::vector<double> weights;     // one per rank
  double self_weight = 1.0;        // put / accumulate: the tensor (and p) is scaled by it once sent
  bool require_mutex = false;
};

struct WinUpdateArgs {
  std::string name;
  double self_weight = 1.0;
  std::vector<int32_t> ranks;  // in-neighbors to mix in
  std::vector<double> weights;
  bool reset = false;
  bool require_mutex = false;
  std::shared_ptr<Tensor> output;  // receives the result (the window tensor itself, or a clone)
};

// MPI put / get / accumulate calls that moved window data in this process so
// far (a window op makes one per neighbor, or more for a window larger than
// BLUEFOG_MAX_WIN_SENT_LENGTH); for diagnostics and tests.
uint64_t WindowTransferCalls();

class WindowManager {
 public:
  // `timeline` (may be null or off) gets a WIN_PUT / WIN_ACCUMULATE / WIN_GET /
  // WIN_UPDATE phase per op and an Aquire_Mutex phase per mutex attempt, in the
  // window name's lane (the phase names of BlueFog 0.3's timeline).
  explicit WindowManager(MpiContext* mpi, Timeline* timeline = nullptr) : mpi_(mpi), timeline_(timeline) {}

  // Collective: all ranks create `name` in the same agreed order.
  // `all_src_ranks[r]` is rank r's in-neighbor list.
  Status Create(const std::string& name, std::shared_ptr<Tensor> tensor, bool zero_init,
                const std::vector<int32_t>& dst_ranks, const std::vector<std::vector<int32_t>>& all_src_ranks);
  // Collective: frees `name`, or every window when `name` is empty.
  Status Free(const std::string& name);
  void FreeAll();

  Status Put(const WinOpArgs& args, bool accumulate);
  Status Get(const WinOpArgs& args);
  Status Update(const WinUpdateArgs& args);
  // Takes the mutex of every rank in `ranks`, in rank order, all or none:
  // when one is held by someone else it lets go of those it took and returns
  // IN_PROGRESS, and the caller calls again later. Nothing is held while
  // waiting, so a win_mutex block that holds rank 1's mutex and wants rank
  // 0's for its own window op gets it from a put that needs both. (The
  // background thread never spins on a peer, which may itself be waiting for
  // this rank in a collective.) A mutex another thread of this process holds
  // (its win_mutex) is waited for like a peer's; one the submitting thread
  // holds itself is an error (win_mutex is not re-entrant), not a deadlock
  // (the thread is DirectSubmitter(): these run as direct ops). On OK every
  // rank's mutex is held (release them with MutexRelease); on an error none.
  // `op` names the caller in errors.
  Status MutexAcquire(const std::string& name, std::vector<int32_t> ranks, const char* op);
  Status MutexRelease(const std::string& name, std::vector<int32_t> ranks);
  Status Versions(const std::string& name, std::vector<int32_t>* ranks, std::vector<int32_t>* versions);
  Status AssociatedP(const std::string& name, double* p);
  Status LockSelf(const std::string& name, bool lock);

  bool Exists(const std::string& name) const { return windows_.count(name) > 0; }
  std::vector<std::string> Names() const;
  void set_associated_p(bool on) { associated_p_ = on; }
  // The most elements one MPI put / get / accumulate call moves (0: no limit
  // beyond MPI's int counts); BLUEFOG_MAX_WIN_SENT_LENGTH.
  void set_max_sent_elements(int64_t n) { max_sent_elements_ = n; }
  bool associated_p() const { return associated_p_; }

 private:
  struct Window {
    std::shared_ptr<Tensor> tensor;  // this rank's window tensor (the frontend's memory)
    DataType dtype;
    int64_t bytes = 0;
    std::vector<int32_t> in_nbrs, out_nbrs;
    std::vector<std::vector<int32_t>> all_src;  // every rank's in-neighbors (slot order)
    char* buffers = nullptr;   // in_nbrs.size() slots of `bytes`
    double* p = nullptr;       // [self p, one per in-neighbor slot]
    int32_t* versions = nullptr;
    int32_t* mutex = nullptr;  // this rank's lock word
    std::vector<std::thread::id> held;  // per rank: the thread of this process holding its mutex (none: default id)
    bool self_locked = false;  // win_lock holds this process's receive buffers
    MPI_Win buf_win = MPI_WIN_NULL, self_win = MPI_WIN_NULL, p_win = MPI_WIN_NULL;
    MPI_Win version_win = MPI_WIN_NULL, mutex_win = MPI_WIN_NULL;
  };
  Status Find(const std::string& name, const char* op, Window** w);
  int64_t ChunkBytes(const Window& w) const;
  static Status LockedSelf(const char* op, const std::string& name);
  static int Slot(const Window& w, int32_t receiver, int32_t sender);
  void Destroy(Window& w);

  MpiContext* mpi_;
  Timeline* timeline_;
  std::map<std::string, Window> windows_;
  FusionBuffer scratch_;
  bool associated_p_ = false;
  int64_t max_sent_elements_ = 0;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_WINDOW_MANAGER_H
