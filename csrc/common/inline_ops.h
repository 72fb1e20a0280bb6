// Small ops completed by the negotiation exchange itself.
//
// A small allreduce or neighbor_allreduce input is copied into this rank's
// negotiation message. When the op turns out ready with every rank's input on
// board (the coordinator checks; see Response::inline_by_rank), every rank
// computes its own result locally from the same bytes, in the same order: the
// op costs one collective (the negotiation that was happening anyway) instead
// of two, and the results agree bit for bit across ranks.
#ifndef BLUEFOG_COMMON_INLINE_OPS_H
#define BLUEFOG_COMMON_INLINE_OPS_H

#include <cstdint>
#include <vector>

#include "message.h"
#include "status.h"
#include "tensor_queue.h"

namespace bluefog {

// The ops that can travel inline: allreduce (not hierarchical) and
// neighbor_allreduce, on CPU tensors of a summable dtype.
bool TravelsInline(const Request& r);

// Every rank's request carried its whole input: the op completes from the
// negotiation exchange alone (the coordinator's test, the same on every rank).
bool CompletesInline(const std::vector<Request>& by_rank);

// Points the payloads of eligible requests (CPU, ready now, non-empty, at most
// `budget_bytes` in all) at their input tensors, for the encoder to copy from.
void AttachPayloads(TensorQueue& queue, int64_t budget_bytes, std::vector<Request>* requests);

// This rank's result of an inline response: the allreduce sum (averaged when
// asked) in entry.output, or, for neighbor_allreduce, a new output holding
// each source's input scaled by that source's weight for `my_rank`, in the
// entry's source order -- exactly what the MPI exchange would deliver.
Status ComputeInline(const Response& resp, int my_rank, TensorTableEntry& entry);

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_INLINE_OPS_H
