// MPI state of one BlueFog instance: communicators, machine layout, datatypes.
#ifndef BLUEFOG_COMMON_MPI_CONTEXT_H
#define BLUEFOG_COMMON_MPI_CONTEXT_H

#include <mpi.h>

#include <array>
#include <string>
#include <vector>

#include "common.h"
#include "config.h"
#include "status.h"

namespace bluefog {

class MpiContext {
 public:
  // Initializes MPI if needed (on the calling thread) and duplicates `base`
  // (MPI_COMM_NULL means MPI_COMM_WORLD). Collective over `base`.
  // `failed`: why this rank cannot start (its settings did not parse), or OK;
  // every rank then learns it and Initialize fails everywhere, instead of the
  // other ranks waiting at init for a rank that left.
  Status Initialize(MPI_Comm base, const Config& config, const Status& failed = Status::OK());
  // Frees the communicators (collective). MPI itself stays initialized; it is
  // finalized at process exit if BlueFog initialized it.
  void Finalize();

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  int cross_rank() const { return cross_rank_; }
  int cross_size() const { return cross_size_; }
  bool is_homogeneous() const { return homogeneous_; }
  bool threads_multiple() const { return thread_level_ == MPI_THREAD_MULTIPLE; }
  bool unified_window_model() const { return unified_window_model_; }

  MPI_Comm data_comm() const { return data_comm_; }        // data ops
  MPI_Comm control_comm() const { return control_comm_; }  // negotiation only
  MPI_Comm local_comm() const { return local_comm_; }
  MPI_Comm cross_comm() const { return cross_comm_; }

  // MPI datatype for a BlueFog dtype (custom for float16/bfloat16).
  MPI_Datatype MpiType(DataType dtype) const;
  // MPI_SUM, or our own sum for float16/bfloat16 and the wrapping 8/16-bit integer sums.
  MPI_Op SumOp(DataType dtype) const;

 private:
  Status CheckThreadLevel();
  // No rank failed to start (`mine`: this rank's reason, or OK), and the
  // settings every rank must share (config.h) are the same on every rank.
  Status CheckStartAgree(const Config& config, const Status& mine);
  // From the gathered settings (`slots` per rank, the last one a failure
  // reason's length): every failed rank's reason, or OK (collective).
  Status StartFailures(const std::vector<int64_t>& all, int slots, const Status& mine);
  Status BuildMachineLayout(const Config& config);
  void ProbeWindowModel();

  int rank_ = -1, size_ = 0;
  int local_rank_ = 0, local_size_ = 1, cross_rank_ = 0, cross_size_ = 1;
  bool homogeneous_ = true;
  int thread_level_ = MPI_THREAD_SINGLE;
  bool unified_window_model_ = false;
  MPI_Comm data_comm_ = MPI_COMM_NULL, control_comm_ = MPI_COMM_NULL;
  MPI_Comm local_comm_ = MPI_COMM_NULL, cross_comm_ = MPI_COMM_NULL;
  MPI_Datatype half_type_ = MPI_DATATYPE_NULL;
  MPI_Datatype bfloat16_type_ = MPI_DATATYPE_NULL;
  std::array<MPI_Op, kNumDataTypes> own_sum_{};  // MPI_OP_NULL where MPI_SUM serves (set in Initialize)
};

// Finalizes MPI if MpiContext initialized it (at process exit).
void FinalizeMpiIfOwned();

// True in a process forked (without exec) from one where BlueFog started, e.g.
// a DataLoader worker: the background thread and the MPI state are the
// parent's, so the child must neither communicate nor shut down or finalize.
bool InForkedChild();

// "MPI_Xxx failed: <MPI error string>".
std::string MpiErrorText(const char* call, int code);

// The MPI library in use, from MPI_Get_library_version up to its first comma
// or line end ("Open MPI v5.0.11", "MPICH Version: 5.0.2"); callable before MPI_Init.
std::string MpiLibraryName();

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_MPI_CONTEXT_H
