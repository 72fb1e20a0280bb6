// pybind11 module bluefog.torch._C: enqueue ops, poll and wait on handles.
#include <torch/extension.h>

#include <pybind11/stl.h>

#include <mutex>
#include <unordered_map>

#include "../common/handle_manager.h"
#include "../common/operations.h"
#include "adapter.h"

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
  try {
    return std::make_shared<TorchTensor>(t);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// Registers the handle's record, enqueues, and undoes both if enqueue fails.
template <typename EnqueueFn>
int Submit(const char* op, const std::string& given_name, std::shared_ptr<HandleRecord> record, EnqueueFn enqueue) {
  int handle = Handles().Allocate();
  std::string name = given_name.empty() ? std::string(op) + ".noname." + std::to_string(handle) : given_name;
  {
    std::lock_guard<std::mutex> lock(g_records_mu);
    Records()[handle] = record;
  }
  Status s = enqueue(name, [handle](const Status& st) { Handles().MarkDone(handle, st); });
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
                   const std::string& name) {
  CheckContiguous(input, "allreduce");
  CheckContiguous(output, "allreduce");
  auto in = Wrap(input);
  auto out = Wrap(output);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  record->output = output;
  return Submit("allreduce", name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueAllreduce(in, out, nullptr, n, average, hierarchical_local, std::move(cb));
  });
}

int BroadcastAsync(at::Tensor input, at::Tensor output, int root_rank, const std::string& name) {
  CheckContiguous(input, "broadcast");
  CheckContiguous(output, "broadcast");
  auto in = Wrap(input);
  auto out = Wrap(output);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  record->output = output;
  return Submit("broadcast", name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueBroadcast(in, out, nullptr, n, root_rank, std::move(cb));
  });
}

int AllgatherAsync(at::Tensor input, const std::string& name) {
  CheckContiguous(input, "allgather");
  auto in = Wrap(input);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  auto context = std::make_shared<TorchOpContext>(record, input.options());
  return Submit("allgather", name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueAllgather(in, context, nullptr, n, std::move(cb));
  });
}

// The neighbor exchange: output = what each of src_ranks sent (allreduce form:
// [len(src), *shape]; allgather form: concatenated along dim 0).
int NeighborAsync(at::Tensor input, bool gather, std::vector<int32_t> src_ranks, std::vector<int32_t> dst_ranks,
                  std::vector<double> dst_weights, const std::string& name) {
  const char* op = gather ? "neighbor_allgather" : "neighbor_allreduce";
  CheckContiguous(input, op);
  auto in = Wrap(input);
  auto record = std::make_shared<HandleRecord>();
  record->input = input;
  auto context = std::make_shared<TorchOpContext>(record, input.options());
  OpType type = gather ? OpType::NEIGHBOR_ALLGATHER : OpType::NEIGHBOR_ALLREDUCE;
  return Submit(op, name, record, [&](const std::string& n, StatusCallback cb) {
    return EnqueueNeighbor(type, in, context, nullptr, n, std::move(src_ranks), std::move(dst_ranks),
                           std::move(dst_weights), std::move(cb));
  });
}

bool Poll(int handle) {
  bool known = false;
  bool done = Handles().Poll(handle, &known);
  if (!known) throw py::value_error("unknown handle " + std::to_string(handle));
  return done;
}

// Waits with the GIL released, then returns the op's output tensor.
at::Tensor Wait(int handle) {
  Status s;
  {
    py::gil_scoped_release release;
    s = Handles().Wait(handle);
  }
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
  return record->output;
}

}  // namespace
}  // namespace torch_frontend
}  // namespace bluefog

PYBIND11_MODULE(_C, m) {
  using namespace bluefog::torch_frontend;
  m.doc() = "BlueFog PyTorch ops (internal; use bluefog.torch)";
  m.def("allreduce_async", &AllreduceAsync, py::arg("input"), py::arg("output"), py::arg("average"),
        py::arg("hierarchical_local"), py::arg("name"));
  m.def("broadcast_async", &BroadcastAsync, py::arg("input"), py::arg("output"), py::arg("root_rank"),
        py::arg("name"));
  m.def("allgather_async", &AllgatherAsync, py::arg("input"), py::arg("name"));
  m.def("neighbor_async", &NeighborAsync, py::arg("input"), py::arg("gather"), py::arg("src_ranks"),
        py::arg("dst_ranks"), py::arg("dst_weights"), py::arg("name"));
  m.def("poll", &Poll, py::arg("handle"));
  m.def("wait", &Wait, py::arg("handle"));
}
