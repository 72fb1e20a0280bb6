// AsyncOpKernels of the BlueFog TensorFlow ops: each adapts its tensors, hands
// the op to the core's queue, and completes from the core's callback (on the
// background thread) with the op's Status. Errors never hang: an enqueue
// failure or a failed op sets the kernel's status and calls `done`.
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"

#include "../common/operations.h"
#include "adapter.h"

namespace bluefog {
namespace tf_frontend {
namespace {

using tensorflow::AsyncOpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;

class BluefogKernel : public AsyncOpKernel {
 public:
  explicit BluefogKernel(OpKernelConstruction* c) : AsyncOpKernel(c) {}

 protected:
  // The op's name: the `tensor_name` input, or this node's name if empty.
  // False (the status set) when this name already ran in this execution.
  bool OpName(OpKernelContext* ctx, int input, std::string* name) {
    const tensorflow::Tensor& t = ctx->input(input);
    if (!tensorflow::TensorShapeUtils::IsScalar(t.shape())) {
      ctx->SetStatus(absl::InvalidArgumentError("tensor_name must be a scalar string"));
      return false;
    }
    *name = t.scalar<tensorflow::tstring>()();
    if (name->empty()) *name = this->name();
    if (!FirstRunInStep(ctx, *name)) {
      ctx->SetStatus(absl::InvalidArgumentError(
          "bluefog op '" + *name + "' ran a second time in one run of a tf.function (outside a loop), e.g. "
          "because a tf.function holding it is called twice inside another: both runs would go by one name, "
          "so other ranks could pair them the other way round (their results swapped). Give each call its "
          "own name (name=...)"));
      return false;
    }
    return true;
  }

  // Whether `name` has not run yet in this step (one run of a graph or
  // function, including the functions it calls) at this loop frame and
  // iteration. Eagerly, every op is a step of its own. Remembers the last few
  // thousand runs: a repeat comes within one step.
  static bool FirstRunInStep(OpKernelContext* ctx, const std::string& name) {
    static std::mutex mu;
    static std::unordered_set<std::string> seen;
    static std::deque<std::string> order;
    std::string key = std::to_string(ctx->step_id()) + "/" + std::to_string(ctx->frame_iter().frame_id) + "/" +
                      std::to_string(ctx->frame_iter().iter_id) + "/" + name;
    std::lock_guard<std::mutex> lock(mu);
    if (!seen.insert(key).second) return false;
    order.push_back(std::move(key));
    if (order.size() > 4096) {
      seen.erase(order.front());
      order.pop_front();
    }
    return true;
  }

  // Wraps input `index`; sets an InvalidArgument status for a dtype the core lacks.
  std::shared_ptr<TfTensor> Wrap(OpKernelContext* ctx, const tensorflow::Tensor& t) {
    DataType dtype;
    if (!ToDataType(t.dtype(), &dtype)) {
      ctx->SetStatus(absl::InvalidArgumentError("bluefog: unsupported dtype " + tensorflow::DataTypeString(t.dtype())));
      return nullptr;
    }
    return std::make_shared<TfTensor>(t, dtype);
  }

  // Output 0 shaped like input 0 (reusing its buffer when TF allows it).
  std::shared_ptr<TfTensor> SameShapeOutput(OpKernelContext* ctx, int in, int out_index, DataType dtype) {
    tensorflow::Tensor* out = nullptr;
    absl::Status s = ctx->forward_input_or_allocate_output({in}, out_index, ctx->input(in).shape(), &out);
    if (!s.ok()) {
      ctx->SetStatus(s);
      return nullptr;
    }
    return std::make_shared<TfTensor>(*out, dtype);
  }

  // A callback that completes this kernel with the op's final status. Until
  // it runs, the op counts as a blocked wait for the deadlock check: the
  // thread that runs the op waits in TensorFlow, not in BlueFog.
  static StatusCallback Completer(OpKernelContext* ctx, DoneCallback done) {
    auto waited = std::make_shared<std::shared_ptr<void>>(ExternalWait());
    return [ctx, done, waited](const Status& s) {
      waited->reset();
      if (!s.ok()) ctx->SetStatus(ToTfStatus(s));
      done();
    };
  }

  // Enqueue through `enqueue`; an immediate failure completes the kernel here.
  static void Submit(OpKernelContext* ctx, DoneCallback done, const std::function<Status(StatusCallback)>& enqueue) {
    Status s = enqueue(Completer(ctx, done));
    if (!s.ok()) {
      ctx->SetStatus(ToTfStatus(s));
      done();
    }
  }
};

class AllreduceOp : public BluefogKernel {
 public:
  explicit AllreduceOp(OpKernelConstruction* c) : BluefogKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("average", &average_));
    OP_REQUIRES_OK(c, c->GetAttr("hierarchical_local", &hierarchical_local_));
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    std::string name;
    if (!OpName(ctx, 1, &name)) return done();
    auto in = Wrap(ctx, ctx->input(0));
    if (!in) return done();
    auto out = SameShapeOutput(ctx, 0, 0, in->dtype());
    if (!out) return done();
    Submit(ctx, done, [&](StatusCallback cb) {
      return EnqueueAllreduce(in, out, nullptr, name, average_, hierarchical_local_, std::move(cb));
    });
  }

 private:
  bool average_ = true;
  bool hierarchical_local_ = false;
};

// N allreduces that complete the kernel once all of them finished.
class GroupedAllreduceOp : public BluefogKernel {
 public:
  explicit GroupedAllreduceOp(OpKernelConstruction* c) : BluefogKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("average", &average_));
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    const int n = ctx->num_inputs() - 1;
    std::string name;
    if (!OpName(ctx, n, &name)) return done();
    std::vector<std::shared_ptr<TfTensor>> ins(n), outs(n);
    for (int i = 0; i < n; ++i) {
      ins[i] = Wrap(ctx, ctx->input(i));
      if (!ins[i]) return done();
      outs[i] = SameShapeOutput(ctx, i, i, ins[i]->dtype());
      if (!outs[i]) return done();
    }
    struct Group {
      std::atomic<int> remaining;
      std::mutex mu;
      Status first_error;
    };
    auto group = std::make_shared<Group>();
    group->remaining = n;
    StatusCallback complete = Completer(ctx, done);  // once, with the first member's error
    auto finish_one = [complete, group](const Status& s) {
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(group->mu);
        if (group->first_error.ok()) group->first_error = s;
      }
      if (--group->remaining == 0) complete(group->first_error);
    };
    // Every member carries the group's size: ranks that disagree on it fail
    // all of the group's members (none waits for a member that a rank with
    // fewer tensors never submits). All are enqueued here, before any fails.
    for (int i = 0; i < n; ++i) {
      Status s = EnqueueAllreduce(ins[i], outs[i], nullptr, name + "." + std::to_string(i), average_, false,
                                  finish_one, n);
      if (!s.ok()) {
        // The rest are never submitted; the ones in flight still complete.
        for (int j = i; j < n; ++j) finish_one(s);
        return;
      }
    }
  }

 private:
  bool average_ = true;
};

class BroadcastOp : public BluefogKernel {
 public:
  explicit BroadcastOp(OpKernelConstruction* c) : BluefogKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("root_rank", &root_rank_));
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    std::string name;
    if (!OpName(ctx, 1, &name)) return done();
    auto in = Wrap(ctx, ctx->input(0));
    if (!in) return done();
    auto out = SameShapeOutput(ctx, 0, 0, in->dtype());
    if (!out) return done();
    Submit(ctx, done, [&](StatusCallback cb) {
      return EnqueueBroadcast(in, out, nullptr, name, root_rank_, std::move(cb));
    });
  }

 private:
  int root_rank_ = 0;
};

class AllgatherOp : public BluefogKernel {
 public:
  explicit AllgatherOp(OpKernelConstruction* c) : BluefogKernel(c) {}

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    std::string name;
    if (!OpName(ctx, 1, &name)) return done();
    OP_REQUIRES_ASYNC(ctx, ctx->input(0).dims() >= 1,
                      absl::InvalidArgumentError("allgather needs a tensor with at least one dimension"), done);
    auto in = Wrap(ctx, ctx->input(0));
    if (!in) return done();
    auto context = std::make_shared<TfOpContext>(ctx, 0, in->dtype());
    Submit(ctx, done, [&](StatusCallback cb) {
      return EnqueueAllgather(in, context, nullptr, name, std::move(cb));
    });
  }
};

class NeighborExchangeOp : public BluefogKernel {
 public:
  explicit NeighborExchangeOp(OpKernelConstruction* c) : BluefogKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("gather", &gather_));
  }

  void ComputeAsync(OpKernelContext* ctx, DoneCallback done) override {
    std::string name;
    if (!OpName(ctx, 4, &name)) return done();
    for (int i = 1; i <= 3; ++i) {
      OP_REQUIRES_ASYNC(ctx, tensorflow::TensorShapeUtils::IsVector(ctx->input(i).shape()),
                        absl::InvalidArgumentError("src_ranks, dst_ranks and dst_weights must be vectors"), done);
    }
    OP_REQUIRES_ASYNC(ctx, !gather_ || ctx->input(0).dims() >= 1,
                      absl::InvalidArgumentError("neighbor_allgather needs a tensor with at least one dimension"),
                      done);
    auto src = ctx->input(1).vec<int32_t>();
    auto dst = ctx->input(2).vec<int32_t>();
    auto weights = ctx->input(3).vec<double>();
    std::vector<int32_t> src_ranks(src.data(), src.data() + src.size());
    std::vector<int32_t> dst_ranks(dst.data(), dst.data() + dst.size());
    std::vector<double> dst_weights(weights.data(), weights.data() + weights.size());
    auto in = Wrap(ctx, ctx->input(0));
    if (!in) return done();
    auto context = std::make_shared<TfOpContext>(ctx, 0, in->dtype());
    OpType op = gather_ ? OpType::NEIGHBOR_ALLGATHER : OpType::NEIGHBOR_ALLREDUCE;
    Submit(ctx, done, [&](StatusCallback cb) {
      return EnqueueNeighbor(op, in, context, nullptr, name, std::move(src_ranks), std::move(dst_ranks),
                             std::move(dst_weights), std::move(cb));
    });
  }

 private:
  bool gather_ = false;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("BluefogAllreduce").Device(tensorflow::DEVICE_CPU), AllreduceOp);
REGISTER_KERNEL_BUILDER(Name("BluefogGroupedAllreduce").Device(tensorflow::DEVICE_CPU), GroupedAllreduceOp);
REGISTER_KERNEL_BUILDER(Name("BluefogBroadcast").Device(tensorflow::DEVICE_CPU), BroadcastOp);
REGISTER_KERNEL_BUILDER(Name("BluefogAllgather").Device(tensorflow::DEVICE_CPU), AllgatherOp);
REGISTER_KERNEL_BUILDER(Name("BluefogNeighborExchange").Device(tensorflow::DEVICE_CPU), NeighborExchangeOp);

}  // namespace tf_frontend
}  // namespace bluefog
