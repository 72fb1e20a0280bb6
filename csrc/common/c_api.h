// The C ABI of libbluefog_core, used by the Python basics through ctypes.
// Functions returning int status return 0 on success; bluefog_last_error()
// then describes a failure (per thread).
#ifndef BLUEFOG_COMMON_C_API_H
#define BLUEFOG_COMMON_C_API_H

#ifdef __cplusplus
extern "C" {
#endif

int bluefog_init(int has_comm, int fortran_comm, const char* overrides);
void bluefog_shutdown(void);
// The shutdown in slices (see barrier below): 1 once shut down, 0 while the
// other ranks have not all asked for it after timeout_ms, 2 if another thread
// finished it meanwhile and started BlueFog again (that one is left running).
int bluefog_shutdown_wait(int timeout_ms);
int bluefog_is_initialized(void);
const char* bluefog_last_error(void);
int bluefog_last_error_type(void);

int bluefog_rank(void);
int bluefog_size(void);
int bluefog_local_rank(void);
int bluefog_local_size(void);
int bluefog_machine_rank(void);
int bluefog_machine_size(void);
int bluefog_is_homogeneous(void);
int bluefog_mpi_threads_supported(void);
int bluefog_unified_mpi_window_model_supported(void);
int bluefog_nccl_built(void);

// A barrier in two steps, so that Python can wait in slices and see Ctrl-C:
// start it (0, or an error code), then wait up to timeout_ms at a time; the
// wait returns 5 (in progress) while it is not done, then its status code,
// which it also stores in *final_status (if given), with the error text in
// `reason` (reason_size bytes, NUL-terminated): the handle is gone then, and a
// caller interrupted right after the wait still finds the outcome.
int bluefog_barrier_start(int* handle);
int bluefog_barrier_wait(int handle, int timeout_ms, int* final_status, char* reason, int reason_size);
// Switching skip-negotiate mode on (value 1) or off, in the same two steps
// (its wait is bluefog_barrier_wait).
int bluefog_set_skip_negotiate_start(int value, int* handle);
// See EnqueueReject (operations.h): this rank refused op `name` of kind `op`.
int bluefog_reject(const char* op, const char* name, const char* reason);
int bluefog_get_skip_negotiate_stage(void);
// Negotiation exchanges so far, and how many a caller waiting for its op ran.
void bluefog_exchange_counts(long long* total, long long* by_callers);
void bluefog_skip_mode_counts(long long* batches, long long* fused_ops);
// For tests (no MPI): skip-negotiate mode's pattern check of `size` ranks'
// lists (rank r's sources: src_counts[r] entries of `srcs`, ranks in order;
// the same for destinations) through the bit matrices, every rank's words
// ANDed as the agreement allreduce does. Returns 1 with the problem text in
// `out` ("" if the lists mirror each other), 0 when some rank's lists do not
// fit the matrices (the check then gathers the lists), -1 if size is not in
// [1, 1024].
int bluefog_pattern_matrix_check(int size, const int* src_counts, const int* srcs, const int* dst_counts,
                                 const int* dsts, char* out, int out_size);
// Fast rounds so far (see fast_round.h), and how many agreed on an op.
void bluefog_fast_round_counts(long long* rounds, long long* agreed);
// MPI put / get / accumulate calls that moved window data in this process.
long long bluefog_win_transfer_calls(void);
void bluefog_suspend(void);
// Ends the whole job at once (MPI_Abort); used when a rank dies of an uncaught error.
void bluefog_abort(int code);
void bluefog_resume(void);

int bluefog_timeline_start_activity(const char* name, const char* activity);
int bluefog_timeline_end_activity(const char* name);

// Parses BLUEFOG_* settings without starting anything: `text` holds
// "KEY=VALUE" lines, applied over the process environment if `use_env`.
// Returns a JSON object, or NULL with bluefog_last_error() set.
const char* bluefog_parse_config(const char* text, int use_env);

// The names of the runtime's BLUEFOG_* settings, one per line.
const char* bluefog_config_keys(void);

#ifdef __cplusplus
}
#endif

#endif  // BLUEFOG_COMMON_C_API_H
