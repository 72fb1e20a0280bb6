#include "mpi_context.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "half.h"
#include "logging.h"

namespace bluefog {

namespace {

bool g_we_initialized_mpi = false;
std::atomic<bool> g_forked_child{false};

// MPI_SUM replacements. float16/bfloat16 have no MPI type. 8- and 16-bit
// integers must wrap like torch's and TensorFlow's (and like the inline path's
// SumInto), but Open MPI 5's AVX reduction saturates them (measured: int8
// 100 + 100 gave 127, not -56, once a tensor took the MPI path; Open MPI issue
// 8045, closed as won't fix).
template <DataType D>
void OwnSum(void* in, void* inout, int* len, MPI_Datatype*) {
  SumInto(D, inout, in, *len);
}
struct OwnSumEntry {
  DataType dtype;
  MPI_User_function* sum;
};
constexpr OwnSumEntry kOwnSums[] = {{DataType::FLOAT16, &OwnSum<DataType::FLOAT16>},
                                    {DataType::BFLOAT16, &OwnSum<DataType::BFLOAT16>},
                                    {DataType::UINT8, &OwnSum<DataType::UINT8>},
                                    {DataType::INT8, &OwnSum<DataType::INT8>},
                                    {DataType::INT16, &OwnSum<DataType::INT16>}};

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

// A launcher of one MPI starting a program built against another MPI gives
// each process an MPI_COMM_WORLD of its own (a "singleton"): every rank would
// train alone and report success. The launchers' own variables tell.
Status CheckWorldMatchesLauncher() {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world != 1) return Status::OK();
  static const struct {
    const char* var;
    const char* who;
  } kLaunchers[] = {{"OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"},
                    {"PMI_SIZE", "a PMI launcher (MPICH's mpiexec/Hydra, srun)"}};
  for (const auto& l : kLaunchers) {
    const char* value = std::getenv(l.var);
    if (value == nullptr) continue;
    char* end = nullptr;
    long launched = std::strtol(value, &end, 10);
    if (end == value || launched <= 1) continue;
    return Status::Aborted(
        "this process was started as one of " + std::to_string(launched) + " ranks (" + l.var + "=" + value +
        ", set by " + l.who + "), but MPI_COMM_WORLD has 1 rank: BlueFog is built against " + MpiLibraryName() +
        ", which is not the MPI whose launcher started the job, so every rank would run alone. Launch with that "
        "MPI's own mpirun/mpiexec (bfrun --prefix <its installation>), or rebuild BlueFog against the launcher's "
        "MPI (MPICC/MPICXX).");
  }
  return Status::OK();
}

}  // namespace

bool InForkedChild() { return g_forked_child.load(std::memory_order_relaxed); }

void FinalizeMpiIfOwned() {
  if (!g_we_initialized_mpi || InForkedChild()) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string MpiLibraryName() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  MPI_Get_library_version(text, &len);
  std::string s;
  for (int i = 0; i < len && text[i] != '\0' && text[i] != ',' && text[i] != '\n' && text[i] != '\r'; ++i) {
    const bool blank = text[i] == ' ' || text[i] == '\t';
    if (blank && (s.empty() || s.back() == ' ')) continue;
    s.push_back(blank ? ' ' : text[i]);
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::string MpiErrorText(const char* call, int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(call) + " failed: " + std::string(text, len);
}

Status MpiContext::Initialize(MPI_Comm base, const Config& config, const Status& failed) {
  static std::once_flag fork_hook;
  std::call_once(fork_hook, [] { pthread_atfork(nullptr, nullptr, [] { g_forked_child = true; }); });
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    static const int kLevels[] = {MPI_THREAD_SINGLE, MPI_THREAD_FUNNELED, MPI_THREAD_SERIALIZED,
                                  MPI_THREAD_MULTIPLE};
    int provided = 0;
    int rc = MPI_Init_thread(nullptr, nullptr, kLevels[config.mpi_thread_level], &provided);
    if (rc != MPI_SUCCESS) return failed.ok() ? Status::Aborted("MPI_Init_thread failed") : failed;
    g_we_initialized_mpi = true;
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return Status::PreconditionError("MPI has already been finalized; BlueFog cannot start");
  MPI_Query_thread(&thread_level_);
  // A rank that cannot start still joins the first exchange below, so that
  // every rank fails (from the thread that called init: the one that
  // initialized MPI, unless the program did).
  const Status mine = failed.ok() ? CheckThreadLevel() : failed;
  Status s;

  if (base == MPI_COMM_NULL) {
    s = CheckWorldMatchesLauncher();
    if (!s.ok()) {
      FinalizeMpiIfOwned();  // nothing of BlueFog's is left running
      return s;
    }
    base = MPI_COMM_WORLD;
  }
  int rc = MPI_Comm_dup(base, &data_comm_);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_dup(base, &control_comm_);
  if (rc != MPI_SUCCESS) return Status::Aborted("MPI_Comm_dup of the communicator BlueFog was given failed");
  // Errors come back as codes on our communicators; we turn them into Status.
  MPI_Comm_set_errhandler(data_comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(control_comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(data_comm_, &rank_);
  MPI_Comm_size(data_comm_, &size_);

  if (half_type_ == MPI_DATATYPE_NULL) {
    MPI_Type_contiguous(2, MPI_BYTE, &half_type_);
    MPI_Type_commit(&half_type_);
    MPI_Type_contiguous(2, MPI_BYTE, &bfloat16_type_);
    MPI_Type_commit(&bfloat16_type_);
    own_sum_.fill(MPI_OP_NULL);
    for (const OwnSumEntry& e : kOwnSums) MPI_Op_create(e.sum, 1, &own_sum_[static_cast<int>(e.dtype)]);
  }
  s = CheckStartAgree(config, mine);
  if (!s.ok()) {
    Finalize();  // MPI stays up: init may be called again with the settings fixed
    return s;
  }
  s = BuildMachineLayout(config);
  if (!s.ok()) return s;
  ProbeWindowModel();
  return Status::OK();
}

Status MpiContext::CheckThreadLevel() {
  // The background thread makes every data-path MPI call; the thread that
  // initialized MPI is a different one, so SERIALIZED is the minimum.
  if (thread_level_ < MPI_THREAD_SERIALIZED) {
    return Status::PreconditionError(
        std::string("MPI provides only ") + ThreadLevelName(thread_level_) +
        "; BlueFog calls MPI from its background thread and needs at least MPI_THREAD_SERIALIZED "
        "(MPI_THREAD_MULTIPLE if the program also calls MPI, e.g. through mpi4py). Set "
        "BLUEFOG_MPI_THREAD_LEVEL=3 or initialize MPI with a higher thread level.");
  }
  if (!g_we_initialized_mpi && thread_level_ != MPI_THREAD_MULTIPLE) {
    BFLOG(WARNING) << "MPI was initialized by the program with " << ThreadLevelName(thread_level_)
                   << "; calling MPI from the program while BlueFog ops are in flight is unsafe.";
  }
  return Status::OK();
}

Status MpiContext::StartFailures(const std::vector<int64_t>& all, int slots, const Status& mine) {
  std::vector<int> counts(size_), displs(size_);
  int total = 0;
  for (int r = 0; r < size_; ++r) {
    const int64_t n = all[static_cast<size_t>(r) * slots + slots - 1];
    counts[r] = static_cast<int>(std::min<int64_t>(n, 4096));  // (a reason is a line or two)
    displs[r] = total;
    total += counts[r];
  }
  if (total == 0) return Status::OK();
  std::string text = mine.ok() ? std::string() : mine.reason();
  text.resize(static_cast<size_t>(counts[rank_]), ' ');
  std::string texts(static_cast<size_t>(total), '\0');
  int rc = MPI_Allgatherv(text.data(), counts[rank_], MPI_CHAR, texts.data(), counts.data(), displs.data(), MPI_CHAR,
                          control_comm_);
  if (rc != MPI_SUCCESS) return Status::Aborted(MpiErrorText("MPI_Allgatherv (init failures)", rc));
  if (!mine.ok()) return mine;  // this rank's own reason, as it would have been alone
  std::vector<int> ranks;
  std::string why;
  for (int r = 0; r < size_; ++r) {
    if (counts[r] == 0) continue;
    ranks.push_back(r);
    if (why.empty()) why = "rank " + std::to_string(r) + ": " + texts.substr(static_cast<size_t>(displs[r]), counts[r]);
  }
  return Status::InvalidArgument("init: BlueFog could not start on " + RankList(ranks) + " (" + why +
                                 "), so it starts on no rank");
}

Status MpiContext::CheckStartAgree(const Config& config, const Status& mine_failed) {
  // A rank that cannot start: every rank says why (one allgather of the
  // reasons' lengths below, then the reasons themselves).
  // Settings every rank must share: with different values the ranks would run
  // different collectives for the same op (a fast round against an allgather,
  // BlueFog's ring against MPI's allreduce, differently fused buffers or
  // negotiation slots, other machine groups) and hang or compute garbage.
  struct Setting {
    const char* name;
    int64_t value;
  };
  const Setting mine[] = {
      {"BLUEFOG_FUSION_THRESHOLD", config.fusion_threshold_bytes},
      {"BLUEFOG_INLINE_BYTES", config.inline_bytes},
      {"BLUEFOG_FAST_ROUNDS", config.fast_rounds ? 1 : 0},
      {"BLUEFOG_RING_ALLREDUCE_BYTES", config.ring_allreduce_bytes},
      {"BLUEFOG_P2P_GATHER_RANKS", config.p2p_gather_ranks},
      {"BLUEFOG_SKIP_PATTERN_MATRIX_RANKS", config.skip_pattern_matrix_ranks},
      {"BLUEFOG_NODES_PER_MACHINE", config.nodes_per_machine},
  };
  constexpr int kCount = sizeof(mine) / sizeof(mine[0]);
  constexpr int kSlots = kCount + 1;  // the settings, then the length of this rank's failure
  const std::string& reason = mine_failed.reason();
  int64_t values[kSlots];
  for (int i = 0; i < kCount; ++i) values[i] = mine[i].value;
  values[kCount] = mine_failed.ok() ? 0 : static_cast<int64_t>(std::max<size_t>(reason.size(), 1));
  std::vector<int64_t> all(static_cast<size_t>(kSlots) * size_);
  int rc = MPI_Allgather(values, kSlots, MPI_INT64_T, all.data(), kSlots, MPI_INT64_T, control_comm_);
  if (rc != MPI_SUCCESS) return Status::Aborted(MpiErrorText("MPI_Allgather (init settings)", rc));
  Status failed = StartFailures(all, kSlots, mine_failed);
  if (!failed.ok()) return failed;
  for (int i = 0; i < kCount; ++i) {
    std::vector<std::string> by_rank(size_);
    for (int r = 0; r < size_; ++r) by_rank[r] = std::to_string(all[static_cast<size_t>(r) * kSlots + i]);
    const std::string differ = DisagreementText(by_rank, mine[i].name);
    if (differ.empty()) continue;
    return Status::InvalidArgument("init: " + differ + "; every rank must use the same value (set it for the whole "
                                   "job, e.g. mpirun -x / bfrun's environment), or the ranks would run different "
                                   "collectives for the same op and hang");
  }
  return Status::OK();
}

Status MpiContext::BuildMachineLayout(const Config& config) {
  if (config.nodes_per_machine > 0) {
    int per = config.nodes_per_machine;
    MPI_Comm_split(data_comm_, rank_ / per, rank_, &local_comm_);
  } else {
    MPI_Comm_split_type(data_comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local_comm_);
  }
  MPI_Comm_rank(local_comm_, &local_rank_);
  MPI_Comm_size(local_comm_, &local_size_);
  MPI_Comm_split(data_comm_, local_rank_, rank_, &cross_comm_);
  MPI_Comm_rank(cross_comm_, &cross_rank_);
  MPI_Comm_size(cross_comm_, &cross_size_);

  // Homogeneous: every machine has the same local size and holds consecutive ranks.
  int mine[2] = {local_size_, rank_ - local_rank_};
  std::vector<int> all(2 * size_);
  MPI_Allgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, data_comm_);
  homogeneous_ = true;
  for (int r = 0; r < size_; ++r) {
    int lsize = all[2 * r], first = all[2 * r + 1];
    if (lsize != local_size_ || first != (r / local_size_) * local_size_) homogeneous_ = false;
  }
  return Status::OK();
}

void MpiContext::ProbeWindowModel() {
  int value = 0;
  MPI_Win win;
  if (MPI_Win_create(&value, sizeof(int), sizeof(int), MPI_INFO_NULL, data_comm_, &win) != MPI_SUCCESS) {
    unified_window_model_ = false;
    return;
  }
  int* model = nullptr;
  int flag = 0;
  MPI_Win_get_attr(win, MPI_WIN_MODEL, &model, &flag);
  unified_window_model_ = flag && model && *model == MPI_WIN_UNIFIED;
  MPI_Win_free(&win);
}

void MpiContext::Finalize() {
  for (MPI_Comm* c : {&data_comm_, &control_comm_, &local_comm_, &cross_comm_}) {
    if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
  }
  rank_ = -1;
  size_ = 0;
}

MPI_Datatype MpiContext::MpiType(DataType dtype) const {
  switch (dtype) {
    case DataType::UINT8: return MPI_UINT8_T;
    case DataType::INT8: return MPI_INT8_T;
    case DataType::INT16: return MPI_INT16_T;
    case DataType::INT32: return MPI_INT32_T;
    case DataType::INT64: return MPI_INT64_T;
    case DataType::FLOAT16: return half_type_;
    case DataType::FLOAT32: return MPI_FLOAT;
    case DataType::FLOAT64: return MPI_DOUBLE;
    case DataType::BFLOAT16: return bfloat16_type_;
    case DataType::BOOL: return MPI_C_BOOL;
  }
  return MPI_BYTE;
}

MPI_Op MpiContext::SumOp(DataType dtype) const {
  const MPI_Op own = own_sum_[static_cast<int>(dtype)];
  return own != MPI_OP_NULL ? own : MPI_SUM;
}

}  // namespace bluefog
