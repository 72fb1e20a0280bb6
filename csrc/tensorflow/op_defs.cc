// The BlueFog TensorFlow ops: signatures and shape functions. Every op takes
// its name as a scalar string input (so eager calls with fresh names reuse one
// cached kernel); an empty name means "use the graph node's name", which is
// deterministic when every rank builds the same graph.
//
// All ops are stateful: TensorFlow must never constant-fold, deduplicate or
// prune a collective (every rank has to run it). Inside tf.function this also
// runs them in program order; grouped_allreduce submits many tensors at once.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace bluefog {
namespace tf_frontend {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

#define BLUEFOG_TYPES "{uint8, int8, int16, int32, int64, half, float, double, bfloat16, bool}"

absl::Status ScalarName(InferenceContext* c, int index) {
  ShapeHandle unused;
  return c->WithRank(c->input(index), 0, &unused);
}

// [?, dims 1..] of input 0 (allgather forms).
absl::Status GatherShape(InferenceContext* c) {
  ShapeHandle in, out;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &in));
  TF_RETURN_IF_ERROR(c->ReplaceDim(in, 0, c->UnknownDim(), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("BluefogAllreduce")
    .Attr("T: " BLUEFOG_TYPES)
    .Attr("average: bool")
    .Attr("hierarchical_local: bool = false")
    .Input("tensor: T")
    .Input("tensor_name: string")
    .Output("output: T")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarName(c, 1));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("Sum (average=true: mean) of `tensor` over all ranks (or this machine's ranks).");

REGISTER_OP("BluefogGroupedAllreduce")
    .Attr("T: list(" BLUEFOG_TYPES ") >= 1")
    .Attr("average: bool")
    .Input("tensors: T")
    .Input("tensor_name: string")
    .Output("outputs: T")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      int n = c->num_inputs() - 1;
      TF_RETURN_IF_ERROR(ScalarName(c, n));
      for (int i = 0; i < n; ++i) c->set_output(i, c->input(i));
      return absl::OkStatus();
    })
    .Doc("Allreduce of N tensors submitted together (named <name>.<i>, or <name>.<indices[i]> when indices are "
         "given), so the core can fuse them.");

REGISTER_OP("BluefogBroadcast")
    .Attr("T: " BLUEFOG_TYPES)
    .Attr("root_rank: int")
    .Input("tensor: T")
    .Input("tensor_name: string")
    .Output("output: T")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarName(c, 1));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("root_rank's `tensor` on every rank.");

REGISTER_OP("BluefogAllgather")
    .Attr("T: " BLUEFOG_TYPES)
    .Input("tensor: T")
    .Input("tensor_name: string")
    .Output("output: T")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarName(c, 1));
      return GatherShape(c);
    })
    .Doc("Every rank's `tensor` concatenated along dim 0 in rank order; first dims may differ.");

REGISTER_OP("BluefogNeighborExchange")
    .Attr("T: " BLUEFOG_TYPES)
    .Attr("gather: bool")
    .Input("tensor: T")
    .Input("src_ranks: int32")
    .Input("dst_ranks: int32")
    .Input("dst_weights: double")
    .Input("tensor_name: string")
    .Output("output: T")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarName(c, 4));
      ShapeHandle v;
      for (int i = 1; i <= 3; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &v));
      bool gather = false;
      TF_RETURN_IF_ERROR(c->GetAttr("gather", &gather));
      if (gather) return GatherShape(c);
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->Dim(c->input(1), 0)), c->input(0), &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc("Receives what each of src_ranks sent (each sender scales by its weight for this rank): "
         "gather=false stacks them [len(src_ranks), *shape]; gather=true concatenates along dim 0.");

}  // namespace tf_frontend
}  // namespace bluefog
