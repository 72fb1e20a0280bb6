#include "window_manager.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <type_traits>

#include "half.h"
#include "tensor_queue.h"

namespace bluefog {

namespace {

constexpr int64_t kChunkBytes = int64_t{1} << 30;  // per MPI call (counts are ints)

Status Rc(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return Status::OK();
  return Status::Aborted(MpiErrorText(what.c_str(), rc));
}

// One timeline phase around a scope (nothing when the timeline is off).
class Phase {
 public:
  Phase(Timeline* t, const std::string& name, const char* activity)
      : t_(t && t->enabled() ? t : nullptr), name_(name) {
    if (t_) t_->Start(name_, activity);
  }
  ~Phase() {
    if (t_) t_->End(name_);
  }
  Phase(const Phase&) = delete;
  Phase& operator=(const Phase&) = delete;

 private:
  Timeline* t_;
  const std::string& name_;
};

std::string List(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

template <typename T>
void MixTyped(void* out, const void* self, double sw, const std::vector<const char*>& bufs,
              const std::vector<double>& ws, int64_t n) {
  T* o = static_cast<T*>(out);
  const T* x = static_cast<const T*>(self);
  if constexpr (std::is_integral_v<T>) {
    // Integral weights (what the frontends allow on integer windows): exact,
    // wrapping like torch's integer ops (a double would round int64 values
    // above 2^53), in unsigned arithmetic.
    if (IntegralWeight(sw) && std::all_of(ws.begin(), ws.end(), IntegralWeight)) {
      auto u = [](auto v) { return static_cast<uint64_t>(static_cast<int64_t>(v)); };
      for (int64_t i = 0; i < n; ++i) {
        uint64_t acc = u(sw) * u(x[i]);
        for (size_t j = 0; j < bufs.size(); ++j) acc += u(ws[j]) * u(reinterpret_cast<const T*>(bufs[j])[i]);
        o[i] = static_cast<T>(acc);
      }
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    double acc = sw * static_cast<double>(x[i]);
    for (size_t j = 0; j < bufs.size(); ++j) acc += ws[j] * static_cast<double>(reinterpret_cast<const T*>(bufs[j])[i]);
    o[i] = static_cast<T>(acc);
  }
}

template <>
void MixTyped<float>(void* out, const void* self, double sw, const std::vector<const char*>& bufs,
                     const std::vector<double>& ws, int64_t n) {
  float* o = static_cast<float*>(out);
  const float* x = static_cast<const float*>(self);
  const float s = static_cast<float>(sw);
  for (int64_t i = 0; i < n; ++i) o[i] = s * x[i];
  for (size_t j = 0; j < bufs.size(); ++j) {
    const float* b = reinterpret_cast<const float*>(bufs[j]);
    const float w = static_cast<float>(ws[j]);
    for (int64_t i = 0; i < n; ++i) o[i] += w * b[i];
  }
}

void Mix(DataType dtype, void* out, const void* self, double sw, const std::vector<const char*>& bufs,
         const std::vector<double>& ws, int64_t n) {
  switch (dtype) {
    case DataType::FLOAT32: MixTyped<float>(out, self, sw, bufs, ws, n); return;
    case DataType::FLOAT64: MixTyped<double>(out, self, sw, bufs, ws, n); return;
    case DataType::INT32: MixTyped<int32_t>(out, self, sw, bufs, ws, n); return;
    case DataType::INT64: MixTyped<int64_t>(out, self, sw, bufs, ws, n); return;
    default: return;
  }
}

}  // namespace

namespace {
std::atomic<uint64_t> transfer_calls{0};
}  // namespace

uint64_t WindowTransferCalls() { return transfer_calls.load(std::memory_order_relaxed); }

int64_t WindowManager::ChunkBytes(const Window& w) const {
  const int64_t elem = static_cast<int64_t>(DataTypeSize(w.dtype));
  int64_t chunk = kChunkBytes / elem * elem;
  if (max_sent_elements_ > 0) chunk = std::min(chunk, max_sent_elements_ * elem);
  return chunk;
}

int WindowManager::Slot(const Window& w, int32_t receiver, int32_t sender) {
  const auto& src = w.all_src[receiver];
  auto it = std::find(src.begin(), src.end(), sender);
  return it == src.end() ? -1 : static_cast<int>(it - src.begin());
}

Status WindowManager::Find(const std::string& name, const char* op, Window** w) {
  auto it = windows_.find(name);
  if (it == windows_.end()) {
    std::string known;
    for (const auto& kv : windows_) known += (known.empty() ? "" : ", ") + kv.first;
    return Status::InvalidArgument(std::string(op) + ": unknown window '" + name + "' (existing windows: [" + known +
                                   "]); create it with win_create first");
  }
  *w = &it->second;
  return Status::OK();
}

std::vector<std::string> WindowManager::Names() const {
  std::vector<std::string> names;
  for (const auto& kv : windows_) names.push_back(kv.first);
  return names;
}

Status WindowManager::Create(const std::string& name, std::shared_ptr<Tensor> tensor, bool zero_init,
                             const std::vector<int32_t>& dst_ranks,
                             const std::vector<std::vector<int32_t>>& all_src_ranks) {
  // Every rank has the same set of windows, so every rank takes this branch alike.
  if (windows_.count(name)) {
    return Status::InvalidArgument("win_create: a window named '" + name + "' already exists; free it first");
  }
  const int me = mpi_->rank();
  MPI_Comm comm = mpi_->data_comm();
  Window w;
  w.tensor = std::move(tensor);
  w.dtype = w.tensor->dtype();
  w.bytes = w.tensor->size_bytes();
  w.all_src = all_src_ranks;
  w.in_nbrs = all_src_ranks[me];
  w.out_nbrs = dst_ranks;
  const int64_t n_in = static_cast<int64_t>(w.in_nbrs.size());
  MPI_Alloc_mem(std::max<int64_t>(1, n_in * w.bytes), MPI_INFO_NULL, &w.buffers);
  MPI_Alloc_mem(sizeof(double) * (n_in + 1), MPI_INFO_NULL, &w.p);
  MPI_Alloc_mem(sizeof(int32_t) * std::max<int64_t>(1, n_in), MPI_INFO_NULL, &w.versions);
  MPI_Alloc_mem(sizeof(int32_t), MPI_INFO_NULL, &w.mutex);
  for (int64_t i = 0; i < n_in; ++i) {
    char* slot = w.buffers + i * w.bytes;
    if (zero_init) std::memset(slot, 0, w.bytes);
    else if (w.bytes > 0) std::memcpy(slot, w.tensor->data(), w.bytes);
    w.p[i + 1] = zero_init ? 0.0 : 1.0;
    w.versions[i] = 0;
  }
  w.p[0] = 1.0;
  *w.mutex = 0;
  Status s = Rc(MPI_Win_create(w.buffers, n_in * w.bytes, 1, MPI_INFO_NULL, comm, &w.buf_win), "MPI_Win_create");
  if (s.ok()) s = Rc(MPI_Win_create(w.tensor->data(), w.bytes, 1, MPI_INFO_NULL, comm, &w.self_win), "MPI_Win_create");
  if (s.ok()) s = Rc(MPI_Win_create(w.p, sizeof(double) * (n_in + 1), sizeof(double), MPI_INFO_NULL, comm, &w.p_win), "MPI_Win_create");
  if (s.ok()) s = Rc(MPI_Win_create(w.versions, sizeof(int32_t) * n_in, sizeof(int32_t), MPI_INFO_NULL, comm, &w.version_win), "MPI_Win_create");
  if (s.ok()) s = Rc(MPI_Win_create(w.mutex, sizeof(int32_t), sizeof(int32_t), MPI_INFO_NULL, comm, &w.mutex_win), "MPI_Win_create");
  if (!s.ok()) {
    Destroy(w);
    return s;
  }
  for (MPI_Win win : {w.buf_win, w.self_win, w.p_win, w.version_win, w.mutex_win}) MPI_Win_set_errhandler(win, MPI_ERRORS_RETURN);
  windows_.emplace(name, std::move(w));
  return Status::OK();
}

void WindowManager::Destroy(Window& w) {
  for (MPI_Win* win : {&w.buf_win, &w.self_win, &w.p_win, &w.version_win, &w.mutex_win}) {
    if (*win != MPI_WIN_NULL) MPI_Win_free(win);
  }
  for (void* mem : {static_cast<void*>(w.buffers), static_cast<void*>(w.p), static_cast<void*>(w.versions),
                    static_cast<void*>(w.mutex)}) {
    if (mem) MPI_Free_mem(mem);
  }
  w.buffers = nullptr;
  w.p = nullptr;
  w.versions = nullptr;
  w.mutex = nullptr;
  w.tensor.reset();
}

Status WindowManager::Free(const std::string& name) {
  if (name.empty()) {
    FreeAll();
    return Status::OK();
  }
  Window* w = nullptr;
  Status s = Find(name, "win_free", &w);
  if (!s.ok()) return s;
  Destroy(*w);
  windows_.erase(name);
  return Status::OK();
}

void WindowManager::FreeAll() {
  for (auto& kv : windows_) Destroy(kv.second);
  windows_.clear();
}

Status WindowManager::Put(const WinOpArgs& a, bool accumulate) {
  const char* op = accumulate ? "win_accumulate" : "win_put";
  Phase phase(timeline_, a.name, accumulate ? "WIN_ACCUMULATE" : "WIN_PUT");
  Window* w = nullptr;
  Status s = Find(a.name, op, &w);
  if (!s.ok()) return s;
  if (a.tensor->dtype() != w->dtype || a.tensor->size_bytes() != w->bytes) {
    return Status::InvalidArgument(std::string(op) + " '" + a.name + "': the tensor (" + DataTypeName(a.tensor->dtype()) +
                                   ", " + ShapeString(a.tensor->shape()) + ") does not match the window (" +
                                   DataTypeName(w->dtype) + ", " + ShapeString(w->tensor->shape()) + ")");
  }
  const int me = mpi_->rank();
  for (int32_t d : a.ranks) {
    if (std::find(w->out_nbrs.begin(), w->out_nbrs.end(), d) == w->out_nbrs.end()) {
      return Status::InvalidArgument(std::string(op) + " '" + a.name + "': rank " + std::to_string(d) +
                                     " is not an out-neighbor of rank " + std::to_string(me) + " (out-neighbors when " +
                                     "the window was created: " + List(w->out_nbrs) + ")");
    }
    if (Slot(*w, d, me) < 0) {  // only possible for a window made in skip-negotiate mode
      return Status::InvalidArgument(std::string(op) + " '" + a.name + "': rank " + std::to_string(d) +
                                     " did not list rank " + std::to_string(me) + " as an in-neighbor when the " +
                                     "window was created (the ranks' topologies disagreed)");
    }
  }
  if (a.require_mutex) {
    s = MutexAcquire(a.name, a.ranks, op);
    if (!s.ok()) return s;
  }
  const int64_t elem = static_cast<int64_t>(DataTypeSize(w->dtype));
  MPI_Datatype type = mpi_->MpiType(w->dtype);
  const int32_t one = 1;
  for (size_t i = 0; i < a.ranks.size() && s.ok(); ++i) {
    const int32_t d = a.ranks[i];
    const double wt = a.weights.empty() ? 1.0 : a.weights[i];
    const char* from = static_cast<const char*>(a.tensor->data());
    if (wt != 1.0) {
      char* copy = scratch_.Reserve(static_cast<size_t>(w->bytes));
      if (copy == nullptr) {
        s = Status::Aborted("out of memory for the scaled copy of window " + a.name + "'s tensor");
        break;
      }
      std::memcpy(copy, from, w->bytes);
      ScaleBuffer(w->dtype, copy, w->bytes / elem, wt);
      from = copy;
    }
    const int slot = Slot(*w, d, me);
    const MPI_Aint disp = static_cast<MPI_Aint>(slot) * w->bytes;
    s = Rc(MPI_Win_lock(MPI_LOCK_SHARED, d, 0, w->buf_win), "MPI_Win_lock");
    const int64_t chunk = ChunkBytes(*w);
    for (int64_t off = 0; off < w->bytes && s.ok(); off += chunk) {
      int64_t n = std::min(chunk, w->bytes - off);
      transfer_calls.fetch_add(1, std::memory_order_relaxed);
      if (accumulate) {
        s = Rc(MPI_Accumulate(from + off, static_cast<int>(n / elem), type, d, disp + off, static_cast<int>(n / elem),
                              type, MPI_SUM, w->buf_win), "MPI_Accumulate");
      } else {
        s = Rc(MPI_Put(from + off, static_cast<int>(n), MPI_BYTE, d, disp + off, static_cast<int>(n), MPI_BYTE,
                       w->buf_win), "MPI_Put");
      }
    }
    Status unlocked = Rc(MPI_Win_unlock(d, w->buf_win), "MPI_Win_unlock");  // also after a failed put:
    if (s.ok()) s = unlocked;  // a lock left open would keep the target's own updates waiting for good
    if (!s.ok()) break;
    MPI_Win_lock(MPI_LOCK_SHARED, d, 0, w->version_win);
    MPI_Accumulate(&one, 1, MPI_INT32_T, d, slot, 1, MPI_INT32_T, MPI_SUM, w->version_win);
    MPI_Win_unlock(d, w->version_win);
    if (associated_p_) {
      double value = w->p[0] * wt;
      MPI_Win_lock(MPI_LOCK_SHARED, d, 0, w->p_win);
      MPI_Accumulate(&value, 1, MPI_DOUBLE, d, slot + 1, 1, MPI_DOUBLE, accumulate ? MPI_SUM : MPI_REPLACE, w->p_win);
      MPI_Win_unlock(d, w->p_win);
    }
  }
  // The sender's tensor is scaled here, on the thread that runs window ops in
  // order: the next queued op reads the scaled values, and nothing touches
  // the tensor while an earlier op still reads it.
  if (s.ok() && a.self_weight != 1.0) ScaleBuffer(w->dtype, a.tensor->data(), w->bytes / elem, a.self_weight);
  if (s.ok() && associated_p_) w->p[0] *= a.self_weight;
  if (a.require_mutex) {
    Status r = MutexRelease(a.name, a.ranks);
    if (s.ok()) s = r;
  }
  return s;
}

Status WindowManager::Get(const WinOpArgs& a) {
  Phase phase(timeline_, a.name, "WIN_GET");
  Window* w = nullptr;
  Status s = Find(a.name, "win_get", &w);
  if (!s.ok()) return s;
  if (w->self_locked) return LockedSelf("win_get", a.name);
  const int me = mpi_->rank();
  for (int32_t src : a.ranks) {
    if (Slot(*w, me, src) < 0) {
      return Status::InvalidArgument("win_get '" + a.name + "': rank " + std::to_string(src) +
                                     " is not an in-neighbor of rank " + std::to_string(me) +
                                     " (in-neighbors when the window was created: " + List(w->in_nbrs) + ")");
    }
  }
  if (a.require_mutex) {
    s = MutexAcquire(a.name, a.ranks, "win_get");
    if (!s.ok()) return s;
  }
  const int64_t elem = static_cast<int64_t>(DataTypeSize(w->dtype));
  for (size_t i = 0; i < a.ranks.size() && s.ok(); ++i) {
    const int32_t src = a.ranks[i];
    const double wt = a.weights.empty() ? 1.0 : a.weights[i];
    const int slot = Slot(*w, me, src);
    char* dest = w->buffers + static_cast<int64_t>(slot) * w->bytes;
    // Own buffer: exclude concurrent remote writes while it is refreshed.
    MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->buf_win);
    s = Rc(MPI_Win_lock(MPI_LOCK_SHARED, src, 0, w->self_win), "MPI_Win_lock");
    const int64_t chunk = ChunkBytes(*w);
    for (int64_t off = 0; off < w->bytes && s.ok(); off += chunk) {
      int64_t n = std::min(chunk, w->bytes - off);
      transfer_calls.fetch_add(1, std::memory_order_relaxed);
      s = Rc(MPI_Get(dest + off, static_cast<int>(n), MPI_BYTE, src, off, static_cast<int>(n), MPI_BYTE, w->self_win),
             "MPI_Get");
    }
    Status unlocked = Rc(MPI_Win_unlock(src, w->self_win), "MPI_Win_unlock");  // also after a failed get
    if (s.ok()) s = unlocked;
    if (s.ok() && wt != 1.0) ScaleBuffer(w->dtype, dest, w->bytes / elem, wt);
    MPI_Win_unlock(me, w->buf_win);
    if (!s.ok()) break;
    MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->version_win);
    w->versions[slot] += 1;
    MPI_Win_unlock(me, w->version_win);
    if (associated_p_) {
      double remote_p = 0;
      MPI_Win_lock(MPI_LOCK_SHARED, src, 0, w->p_win);
      MPI_Get(&remote_p, 1, MPI_DOUBLE, src, 0, 1, MPI_DOUBLE, w->p_win);
      MPI_Win_unlock(src, w->p_win);
      MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->p_win);
      w->p[slot + 1] = remote_p * wt;
      MPI_Win_unlock(me, w->p_win);
    }
  }
  if (a.require_mutex) {
    Status r = MutexRelease(a.name, a.ranks);
    if (s.ok()) s = r;
  }
  return s;
}

Status WindowManager::Update(const WinUpdateArgs& a) {
  Phase phase(timeline_, a.name, "WIN_UPDATE");
  Window* w = nullptr;
  Status s = Find(a.name, "win_update", &w);
  if (!s.ok()) return s;
  if (w->self_locked) return LockedSelf("win_update", a.name);
  const int me = mpi_->rank();
  std::vector<int> slots;
  for (int32_t src : a.ranks) {
    int slot = Slot(*w, me, src);
    if (slot < 0) {
      return Status::InvalidArgument("win_update '" + a.name + "': rank " + std::to_string(src) +
                                     " is not an in-neighbor of rank " + std::to_string(me) +
                                     " (in-neighbors when the window was created: " + List(w->in_nbrs) + ")");
    }
    slots.push_back(slot);
  }
  if (a.output->size_bytes() != w->bytes || a.output->dtype() != w->dtype) {
    return Status::InvalidArgument("win_update '" + a.name + "': output does not match the window");
  }
  if (a.require_mutex) {
    s = MutexAcquire(a.name, {me}, "win_update");
    if (!s.ok()) return s;
  }
  MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->buf_win);
  MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->self_win);
  std::vector<const char*> bufs;
  for (int slot : slots) bufs.push_back(w->buffers + static_cast<int64_t>(slot) * w->bytes);
  const int64_t n = w->bytes / static_cast<int64_t>(DataTypeSize(w->dtype));
  Mix(w->dtype, a.output->data(), w->tensor->data(), a.self_weight, bufs, a.weights, n);
  if (a.reset) {
    for (int slot : slots) std::memset(w->buffers + static_cast<int64_t>(slot) * w->bytes, 0, w->bytes);
  }
  MPI_Win_unlock(me, w->self_win);
  MPI_Win_unlock(me, w->buf_win);
  MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->version_win);
  for (size_t i = 0; i < w->in_nbrs.size(); ++i) w->versions[i] = 0;
  MPI_Win_unlock(me, w->version_win);
  if (associated_p_) {
    MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->p_win);
    double p = a.self_weight * w->p[0];
    for (size_t j = 0; j < slots.size(); ++j) p += a.weights[j] * w->p[slots[j] + 1];
    if (a.reset)
      for (int slot : slots) w->p[slot + 1] = 0.0;
    w->p[0] = p;
    MPI_Win_unlock(me, w->p_win);
  }
  if (a.require_mutex) {
    Status r = MutexRelease(a.name, {me});
    if (s.ok()) s = r;
  }
  return s;
}

Status WindowManager::MutexAcquire(const std::string& name, std::vector<int32_t> ranks, const char* op) {
  Phase phase(timeline_, name, "Aquire_Mutex");  // one per attempt (a deferred one is retried later)
  Window* w = nullptr;
  Status s = Find(name, op, &w);
  if (!s.ok()) return s;
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  const int size = mpi_->size();
  if (w->held.size() != static_cast<size_t>(size)) w->held.assign(size, std::thread::id());
  const std::thread::id me_thread = DirectSubmitter();
  bool other_thread = false;  // holds one of them: wait for its release, as for a peer
  for (int32_t r : ranks) {  // checked before any is taken
    if (r < 0 || r >= size) {
      return Status::InvalidArgument(std::string(op) + " '" + name + "': mutex rank " + std::to_string(r) +
                                     " out of range [0, " + std::to_string(size) + ")");
    }
    const std::thread::id holder = w->held[r];
    if (holder == std::thread::id()) continue;  // not held in this process
    if (holder != me_thread) {
      other_thread = true;
    } else {
      return Status::InvalidArgument(
          std::string(op) + " '" + name + "': this process already holds the window mutex of rank " +
          std::to_string(r) + " (win_mutex is not re-entrant: a window op with require_mutex=True inside `with "
          "win_mutex(...)` on the same ranks would wait for itself)");
    }
  }
  if (other_thread) return Status::InProgress();
  const int32_t one = 1, zero = 0;
  std::vector<int32_t> taken;
  for (int32_t r : ranks) {
    int32_t previous = -1;
    MPI_Win_lock(MPI_LOCK_EXCLUSIVE, r, 0, w->mutex_win);
    s = Rc(MPI_Compare_and_swap(&one, &zero, &previous, MPI_INT32_T, r, 0, w->mutex_win), "MPI_Compare_and_swap");
    MPI_Win_unlock(r, w->mutex_win);
    if (!s.ok() || previous != 0) {
      // Failed, or held elsewhere: let go of those taken so far (and try
      // again later). A holder that waits for one of them (a win_mutex
      // block's own window op) can then go on; holding them while waiting
      // deadlocked it.
      MutexRelease(name, taken);
      return s.ok() ? Status::InProgress() : s;
    }
    w->held[r] = me_thread;
    taken.push_back(r);
  }
  return Status::OK();  // all held now; the caller releases them
}

Status WindowManager::MutexRelease(const std::string& name, std::vector<int32_t> ranks) {
  Window* w = nullptr;
  Status s = Find(name, "win_mutex", &w);
  if (!s.ok()) return s;
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  const int32_t zero = 0;
  for (int32_t r : ranks) {
    if (r < 0 || r >= mpi_->size()) {
      if (s.ok()) s = Status::InvalidArgument("win_mutex '" + name + "': rank " + std::to_string(r) + " out of range");
      continue;
    }
    MPI_Win_lock(MPI_LOCK_EXCLUSIVE, r, 0, w->mutex_win);
    Status one = Rc(MPI_Accumulate(&zero, 1, MPI_INT32_T, r, 0, 1, MPI_INT32_T, MPI_REPLACE, w->mutex_win),
                    "MPI_Accumulate");
    MPI_Win_unlock(r, w->mutex_win);
    if (static_cast<size_t>(r) < w->held.size()) w->held[r] = std::thread::id();
    if (s.ok()) s = one;
  }
  return s;
}

Status WindowManager::Versions(const std::string& name, std::vector<int32_t>* ranks, std::vector<int32_t>* versions) {
  Window* w = nullptr;
  Status s = Find(name, "get_win_version", &w);
  if (!s.ok()) return s;
  const int me = mpi_->rank();
  MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->version_win);
  *ranks = w->in_nbrs;
  versions->assign(w->versions, w->versions + w->in_nbrs.size());
  MPI_Win_unlock(me, w->version_win);
  return Status::OK();
}

Status WindowManager::AssociatedP(const std::string& name, double* p) {
  Window* w = nullptr;
  Status s = Find(name, "win_associated_p", &w);
  if (!s.ok()) return s;
  *p = w->p[0];
  return Status::OK();
}

Status WindowManager::LockSelf(const std::string& name, bool lock) {
  Window* w = nullptr;
  Status s = Find(name, "win_lock", &w);
  if (!s.ok()) return s;
  const int me = mpi_->rank();
  if (lock == w->self_locked) {
    return Status::InvalidArgument("win_lock '" + name + "': " +
                                   (lock ? "this process already holds it (win_lock is not re-entrant)"
                                         : "not held by this process"));
  }
  if (lock) {
    s = Rc(MPI_Win_lock(MPI_LOCK_EXCLUSIVE, me, 0, w->buf_win), "MPI_Win_lock");
  } else {
    s = Rc(MPI_Win_unlock(me, w->buf_win), "MPI_Win_unlock");
  }
  if (s.ok()) w->self_locked = lock;
  return s;
}

// Get and update refresh / read this process's receive buffers under an
// exclusive lock of its own window, which win_lock already holds: they would
// wait for themselves.
Status WindowManager::LockedSelf(const char* op, const std::string& name) {
  return Status::InvalidArgument(std::string(op) + " '" + name + "': this process holds win_lock('" + name +
                                 "'), which keeps its receive buffers locked; call it after the win_lock block");
}

}  // namespace bluefog
