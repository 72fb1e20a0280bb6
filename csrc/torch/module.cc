// pybind11 module bluefog.torch._C: enqueue ops, poll and wait on handles.
#include <torch/extension.h>

#include <pybind11/stl.h>

#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <unordered_map>

#include "../common/handle_manager.h"
#include "../common/operations.h"
#include "../common/window_manager.h"
#include "adapter.h"
#include "output_pool.h"

namespace py = pybind11;

namespace bluefog {
namespace torch_frontend {
namespace {

HandleManager& Handles() {
  static HandleManager* handles = new HandleManager();
  return *handles;
}

std::mutex g_records_mu;
std::unordered_map<int, std::shared_ptr<HandleRecord>>& Records() {
  static auto* records = new std::unordered_map<int, std::shared_ptr<HandleRecord>>();
  return *records;
}

[[noreturn]] void Throw(const Status& s) {
  switch (s.type()) {
    case StatusType::INVALID_ARGUMENT:
    case StatusType::PRECONDITION_ERROR:
      throw py::value_error(s.reason());
    default:
      throw std::runtime_error(s.reason());
  }
}

void CheckContiguous(const at::Tensor& t, const char* op) {
  if (!t.is_contiguous()) throw py::value_error(std::string(op) + ": the tensor must be contiguous");
}

std::shared_ptr<TorchTensor> Wrap(const at::Tensor& t) {
  // No memory to hand to MPI (a null data pointer would crash it).
  if (t.is_meta() || t.layout() != c10::kStrided) {
    throw py::value_error("expected a dense tensor with memory of its own, got a meta or sparse tensor");
  }
  // Without an NCCL controller the core reads and writes host memory only: the
  // Python layer stages GPU tensors through the CPU, and anything else that
  // got here would hand a device pointer to memcpy and MPI.
  if (!t.is_cpu()) {
    throw py::value_error("expected a CPU tensor here (GPU tensors are staged through the CPU by bluefog.torch), "
                          "got one on " + t.device().str());
  }
  try {
    return std::make_shared<TorchTensor>(t);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// Registers the handle's record, enqueues, and undoes both if enqueue fails.
// `blocking`: the caller waits for the handle at once (and runs its cycle).
template <typename EnqueueFn>
int Submit(const char* op, const std::string& given_name, std::shared_ptr<HandleRecord> record, EnqueueFn enqueue,
           bool blocking = false) {
  int handle = Handles().Allocate();
  std::string name = given_name.empty() ? std::string(op) + ".noname." + std::to_string(handle) : given_name;
  {
    std::lock_guard<std::mutex> lock(g_records_mu);
    Records()[handle] = record;
  }
  Status s;
  {
    CallerWaitsScope waits(blocking);
    s = enqueue(name, [handle](const Status& st) { Handles().MarkDone(handle, st); });
  }
  if (!s.ok()) {
    Handles().MarkDone(handle, s);
    Handles().Wait(handle);
    std::lock_guard<std::mutex> lock(g_records_mu);
    Records().erase(handle);
    Throw(s);
  }
  return handle;
}

int AllreduceAsync(at::Tensor input, at::Tensor output, bool average, bool hierarchical_local,
                   const std::string& name, bool blocking) {
  CheckContiguous(input, "allreduce");
  CheckContiguous(output, "allreduce");
  auto in = Wrap(input);
  auto out = Wrap(output);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  record->output = output;
  record->wrote_output = input.is_same(output);
  return Submit("allreduce", name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueAllreduce(in, out, nullptr, n, average, hierarchical_local, std::move(cb));
  }, blocking);
}

// The blocking allreduces' short path (bluefog.torch.mpi_ops): submits a
// contiguous dense CPU tensor, in place or into a new output, for the caller
// to wait on at once; -1 (nothing submitted) for anything else, which takes
// the general path with its checks and staging. Checking here instead of in
// Python saves about 0.3 us per op, and on 4 ranks sharing 2 cores every
// microsecond of Python costs about two of latency.
int AllreducePlain(py::handle tensor, bool inplace, bool average, bool hierarchical_local, const std::string& name) {
  if (!THPVariable_Check(tensor.ptr())) return -1;
  const at::Tensor& input = THPVariable_Unpack(tensor.ptr());
  if (!input.is_cpu() || input.layout() != c10::kStrided || !input.is_contiguous()) return -1;
  at::Tensor output = inplace ? input : EmptyOutput(input.sizes(), input.options(), input.data_ptr());
  return AllreduceAsync(input, output, average, hierarchical_local, name, /*blocking=*/true);
}

int BroadcastAsync(at::Tensor input, at::Tensor output, int root_rank, const std::string& name, bool blocking) {
  CheckContiguous(input, "broadcast");
  CheckContiguous(output, "broadcast");
  auto in = Wrap(input);
  auto out = Wrap(output);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  record->output = output;
  record->wrote_output = input.is_same(output);
  return Submit("broadcast", name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueBroadcast(in, out, nullptr, n, root_rank, std::move(cb));
  }, blocking);
}

int AllgatherAsync(at::Tensor input, const std::string& name, bool blocking) {
  CheckContiguous(input, "allgather");
  auto in = Wrap(input);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  auto context = std::make_shared<TorchOpContext>(record, input);
  return Submit("allgather", name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueAllgather(in, context, nullptr, n, std::move(cb));
  }, blocking);
}

// The neighbor exchange: output = what each of src_ranks sent (allreduce form:
// [len(src), *shape]; allgather form: concatenated along dim 0).
// `combine`: (self_weight, src_weights) to make wait() return the weighted
// average (neighbor_allreduce) instead of the received stack.
int NeighborAsync(at::Tensor input, bool gather, std::vector<int32_t> src_ranks, std::vector<int32_t> dst_ranks,
                  std::vector<double> dst_weights, const std::string& name, bool topo_check,
                  std::optional<std::pair<double, std::vector<double>>> combine, bool blocking) {
  const char* op = gather ? "neighbor_allgather" : "neighbor_allreduce";
  CheckContiguous(input, op);
  auto in = Wrap(input);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  if (combine) {
    if (gather || combine->second.size() != src_ranks.size()) {
      throw py::value_error(std::string(op) + ": combine weights need one weight per source rank");
    }
    record->combine = true;
    record->self_weight = combine->first;
    record->src_weights = std::move(combine->second);
  }
  auto context = std::make_shared<TorchOpContext>(record, input);
  OpType type = gather ? OpType::NEIGHBOR_ALLGATHER : OpType::NEIGHBOR_ALLREDUCE;
  return Submit(op, name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueNeighbor(type, in, context, nullptr, n, std::move(src_ranks), std::move(dst_ranks),
                           std::move(dst_weights), std::move(cb), topo_check);
  }, blocking);
}

// neighbor_allreduce's short path (bluefog.torch.neighbor_ops), like
// AllreducePlain: a contiguous dense CPU tensor of a floating-point type is
// submitted (the weights already resolved; `blocking`: the caller waits for it
// at once); -1 (nothing submitted) for anything else.
int NeighborAllreducePlain(py::handle tensor, std::vector<int32_t> src_ranks, std::vector<int32_t> dst_ranks,
                           std::vector<double> dst_weights, const std::string& name, bool topo_check,
                           double self_weight, std::vector<double> src_weights, bool blocking) {
  if (!THPVariable_Check(tensor.ptr())) return -1;
  const at::Tensor& input = THPVariable_Unpack(tensor.ptr());
  const at::ScalarType t = input.scalar_type();
  if (!input.is_cpu() || input.layout() != c10::kStrided || !input.is_contiguous() ||
      (t != at::kFloat && t != at::kDouble && t != at::kHalf && t != at::kBFloat16)) {
    return -1;
  }
  return NeighborAsync(input, /*gather=*/false, std::move(src_ranks), std::move(dst_ranks), std::move(dst_weights),
                       name, topo_check, std::make_pair(self_weight, std::move(src_weights)), blocking);
}

// ---- windows -------------------------------------------------------------
int WinCreateAsync(at::Tensor tensor, const std::string& name, bool zero_init, std::vector<int32_t> src_ranks,
                   std::vector<int32_t> dst_ranks) {
  CheckContiguous(tensor, "win_create");
  auto t = Wrap(tensor);
  auto record = std::make_shared<HandleRecord>();
  record->input = tensor;
  record->output = tensor;  // (the buffers are set up; the tensor is not written)
  record->window = true;
  return Submit("win_create", "win_create." + name, record, [&](const std::string&, StatusCallback cb) {
    return EnqueueWinCreate(t, name, zero_init, std::move(src_ranks), std::move(dst_ranks), std::move(cb));
  });
}

int WinFreeAsync(const std::string& name) {
  auto record = std::make_shared<HandleRecord>();
  record->window = true;
  return Submit("win_free", "win_free." + name, record,
                [&](const std::string&, StatusCallback cb) { return EnqueueWinFree(name, std::move(cb)); });
}

// A direct (non-negotiated) window op: `work` runs on the background thread.
int SubmitDirect(std::shared_ptr<HandleRecord> record, std::function<Status(WindowManager&)> work) {
  record->window = true;
  int handle = Handles().Allocate();
  {
    std::lock_guard<std::mutex> lock(g_records_mu);
    Records()[handle] = record;
  }
  Status s = EnqueueDirect(std::move(work), [handle](const Status& st) { Handles().MarkDone(handle, st); });
  if (!s.ok()) {
    Handles().MarkDone(handle, s);
    Handles().Wait(handle);
    std::lock_guard<std::mutex> lock(g_records_mu);
    Records().erase(handle);
    Throw(s);
  }
  return handle;
}

int WinPutAsync(at::Tensor tensor, const std::string& name, std::vector<int32_t> dst_ranks,
                std::vector<double> weights, double self_weight, bool require_mutex, bool accumulate) {
  CheckContiguous(tensor, accumulate ? "win_accumulate" : "win_put");
  WinOpArgs args;
  args.name = name;
  args.tensor = Wrap(tensor);
  args.ranks = std::move(dst_ranks);
  args.weights = std::move(weights);
  args.self_weight = self_weight;
  args.require_mutex = require_mutex;
  auto record = std::make_shared<HandleRecord>();
  record->input = tensor;
  record->output = tensor;
  record->wrote_output = self_weight != 1.0;
  return SubmitDirect(record, [args, accumulate](WindowManager& w) { return w.Put(args, accumulate); });
}

int WinGetAsync(const std::string& name, std::vector<int32_t> src_ranks, std::vector<double> weights,
                bool require_mutex) {
  WinOpArgs args;
  args.name = name;
  args.ranks = std::move(src_ranks);
  args.weights = std::move(weights);
  args.require_mutex = require_mutex;
  return SubmitDirect(std::make_shared<HandleRecord>(), [args](WindowManager& w) { return w.Get(args); });
}

int WinUpdateAsync(const std::string& name, at::Tensor output, double self_weight, std::vector<int32_t> ranks,
                   std::vector<double> weights, bool reset, bool require_mutex) {
  CheckContiguous(output, "win_update");
  WinUpdateArgs args;
  args.name = name;
  args.output = Wrap(output);
  args.self_weight = self_weight;
  args.ranks = std::move(ranks);
  args.weights = std::move(weights);
  args.reset = reset;
  args.require_mutex = require_mutex;
  auto record = std::make_shared<HandleRecord>();
  record->output = output;
  record->wrote_output = true;
  return SubmitDirect(record, [args](WindowManager& w) { return w.Update(args); });
}

int WinMutexAsync(const std::string& name, std::vector<int32_t> ranks, bool acquire) {
  return SubmitDirect(std::make_shared<HandleRecord>(), [name, ranks, acquire](WindowManager& w) {
    return acquire ? w.MutexAcquire(name, ranks, "win_mutex") : w.MutexRelease(name, ranks);
  });
}

int WinLockAsync(const std::string& name, bool lock) {
  return SubmitDirect(std::make_shared<HandleRecord>(),
                      [name, lock](WindowManager& w) { return w.LockSelf(name, lock); });
}

// Runs `work` on the background thread and waits (GIL released).
void RunDirectBlocking(std::function<Status(WindowManager&)> work) {
  Status s;
  {
    py::gil_scoped_release release;
    s = RunBlocking([&](StatusCallback cb) { return EnqueueDirect(work, std::move(cb)); });
  }
  if (!s.ok()) Throw(s);
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> WinVersions(const std::string& name) {
  std::vector<int32_t> ranks, versions;
  RunDirectBlocking([&](WindowManager& w) { return w.Versions(name, &ranks, &versions); });
  return {ranks, versions};
}

double WinAssociatedP(const std::string& name) {
  double p = 0;
  RunDirectBlocking([&](WindowManager& w) { return w.AssociatedP(name, &p); });
  return p;
}

void SetWinAssociatedP(bool on) {
  RunDirectBlocking([on](WindowManager& w) {
    w.set_associated_p(on);
    return Status::OK();
  });
}

std::vector<std::string> WinNames() {
  std::vector<std::string> names;
  RunDirectBlocking([&](WindowManager& w) {
    names = w.Names();
    return Status::OK();
  });
  return names;
}

// 1 for a window op's handle, 0 for another op's, -1 for a handle that is
// unknown or already waited for.
int HandleKind(int handle) {
  std::lock_guard<std::mutex> lock(g_records_mu);
  auto it = Records().find(handle);
  return it == Records().end() ? -1 : it->second->window ? 1 : 0;
}

bool Poll(int handle) {
  bool known = false;
  bool done = Handles().Poll(handle, &known);
  if (!known) throw py::value_error("unknown handle " + std::to_string(handle));
  // Not done: give the core away once, so that a loop polling without pause
  // (`while not poll(h): pass`) lets the background thread run the op on
  // this core (measured: 4.8 ms per small op on 2 ranks without this).
  if (!done) std::this_thread::yield();
  return done;
}

// Waits with the GIL released, then returns the op's output tensor.
// Ctrl-C (SIGINT) ends the wait with KeyboardInterrupt; the op goes on, and its
// handle may be waited for again.
at::Tensor Wait(int handle) {
  Status s;
  bool claimed = false;
  bool interrupted = false;
  {
    py::gil_scoped_release release;
    s = Handles().Wait(handle, SpinMicros(), HelpUntil, &claimed, [&interrupted] {
      py::gil_scoped_acquire acquire;
      interrupted = PyErr_CheckSignals() != 0;  // the handler's exception stays set
      return interrupted;
    });
  }
  if (interrupted) throw py::error_already_set();
  if (!claimed) Throw(s);  // unknown, or another thread's wait has it (and its record)
  std::shared_ptr<HandleRecord> record;
  {
    std::lock_guard<std::mutex> lock(g_records_mu);
    auto it = Records().find(handle);
    if (it != Records().end()) {
      record = it->second;
      Records().erase(it);
    }
  }
  if (!s.ok()) Throw(s);
  if (!record) throw py::value_error("unknown handle " + std::to_string(handle));
  std::lock_guard<std::mutex> lock(record->mu);
  if (record->combine) {
    py::gil_scoped_release release;
    return CombineNeighbors(record->input, record->output, record->self_weight, record->src_weights);
  }
  // (Not an inference tensor: their versions are not tracked, and bumping one raises.)
  if (record->wrote_output && record->output.defined() && !record->output.is_inference()) {
    torch::autograd::impl::bump_version(record->output);
  }
  return record->output;
}

}  // namespace
}  // namespace torch_frontend
}  // namespace bluefog

PYBIND11_MODULE(_C, m) {
  using namespace bluefog::torch_frontend;
  m.doc() = "BlueFog PyTorch ops (internal; use bluefog.torch)";
  // `blocking=True`: the caller waits for the returned handle at once; its
  // wait then runs the op's cycle on the calling thread (CallerWaitsScope).
  m.def("allreduce_async", &AllreduceAsync, py::arg("input"), py::arg("output"), py::arg("average"),
        py::arg("hierarchical_local"), py::arg("name"), py::arg("blocking") = false);
  m.def("allreduce_plain", &AllreducePlain);
  m.def("neighbor_allreduce_plain", &NeighborAllreducePlain);
  m.def("broadcast_async", &BroadcastAsync, py::arg("input"), py::arg("output"), py::arg("root_rank"),
        py::arg("name"), py::arg("blocking") = false);
  m.def("allgather_async", &AllgatherAsync, py::arg("input"), py::arg("name"), py::arg("blocking") = false);
  m.def("neighbor_async", &NeighborAsync, py::arg("input"), py::arg("gather"), py::arg("src_ranks"),
        py::arg("dst_ranks"), py::arg("dst_weights"), py::arg("name"), py::arg("topo_check") = true,
        py::arg("combine") = py::none(), py::arg("blocking") = false);
  m.def("win_create_async", &WinCreateAsync);
  m.def("win_free_async", &WinFreeAsync);
  // Window ops always run on the background thread (see EnqueueDirect).
  m.def("win_put_async", &WinPutAsync);
  m.def("win_get_async", &WinGetAsync);
  m.def("win_update_async", &WinUpdateAsync);
  m.def("win_mutex_async", &WinMutexAsync);
  m.def("win_lock_async", &WinLockAsync);
  m.def("win_versions", &WinVersions);
  m.def("win_associated_p", &WinAssociatedP);
  m.def("set_win_associated_p", &SetWinAssociatedP);
  m.def("win_names", &WinNames);
  m.def("empty_output_like", [](const at::Tensor& like) { return EmptyOutput(like.sizes(), like.options(), like.data_ptr()); },
        py::arg("like"), "An uninitialized tensor like `like` for an op's output (CPU ones from the output pool).");
  m.def("cached_output_bytes", &CachedOutputBytes);
  m.def("poll", &Poll, py::arg("handle"));
  m.def("handle_kind", &HandleKind, py::arg("handle"));
  m.def("wait", &Wait, py::arg("handle"));
  m.def(
      "wait_any",
      [](const std::vector<int>& handles, uint64_t kicks, int timeout_ms) {
        py::gil_scoped_release release;
        return Handles().WaitAny(handles, kicks, timeout_ms);
      },
      py::arg("handles"), py::arg("kicks"), py::arg("timeout_ms"));
  m.def("kick", [] { Handles().Kick(); });
  // Held while a Python thread waits for something only BlueFog ops complete
  // (a composite op): the deadlock check counts it as a blocked wait.
  struct BlockedToken {
    std::shared_ptr<void> token = bluefog::ExternalWait();
  };
  py::class_<BlockedToken>(m, "BlockedWait")
      .def(py::init<>())
      .def("release", [](BlockedToken& t) { t.token.reset(); });
  m.def("kicks", [] { return Handles().Kicks(); });
}
