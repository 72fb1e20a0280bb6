"""Where the time of a fused batch of neighbor_allreduce goes (a diagnostic, not a test).

Two ways of averaging N tensors with the static topology's in-neighbors run in alternating
blocks within one job (the same two as in neighbor_bench.py's fusion comparison):

  bf.fused      N bf.neighbor_allreduce_nonblocking(...) started back to back, then N
                bf.synchronize(...)
  mpi4py.fused  fusion written by hand in raw MPI: torch.cat of the N tensors, one
                Neighbor_allgather, one weighted average over the whole batch

Both results are checked first (with the same code that is timed). For every batch each rank
records the wall time, its CPU time (the whole process; the calling thread, by phase: bf.fused
submitting and synchronizing, mpi4py.fused packing, exchange, average; the other threads, the
process's minus the calling thread's: BlueFog's background thread with its negotiation, packing,
exchange, completions and spinning, and MPI's own threads). Each column is the median over the
batches, then the largest over the ranks. A wait may also run a negotiation cycle on the calling
thread itself (BLUEFOG_CALLER_RUNS), which then counts in its synchronize phase: the script
prints bf.fused's negotiation exchanges per batch and how many of them a waiting caller ran (in
skip-negotiate mode, how many ops ran in batches of several). The contenders alternate in blocks,
each first in every other block. At least 2 ranks.

With more ranks than cores the batch is CPU-bound: its wall time is about (ranks per core) x
(CPU per rank), so the CPU columns say where a faster batch has to come from.

    bfrun -np 4 python benchmarks/fusion_breakdown.py
"""
import argparse
import os
import statistics
import sys
import time

import mpi4py

mpi4py.rc.thread_level = "multiple"
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import allreduce_bench as ab  # noqa: E402  (start_bluefog)
import neighbor_bench as nb  # noqa: E402  (Ctx, Batch, verify_all, print_table, parse_size, fmt_size)

from bluefog.common.basics import get_basics  # noqa: E402


class Clocks:
    """Wall, calling-thread CPU and process CPU time, read together at each mark."""

    def __init__(self):
        self.marks = []

    def mark(self):
        self.marks.append((time.perf_counter(), time.thread_time(), time.process_time()))

    def readings(self):
        """The calling thread's CPU in each phase between marks, then wall, calling-thread CPU,
        process CPU and the other threads' CPU (process minus calling thread) over all of them."""
        m = self.marks
        phases = [m[i + 1][1] - m[i][1] for i in range(len(m) - 1)]
        wall, thread, process = (m[-1][k] - m[0][k] for k in range(3))
        return phases + [wall, thread, process, process - thread]


def run(batch):
    """One batch of `batch`'s contender (neighbor_bench.Batch.op), timed phase by phase."""
    clocks = Clocks()
    clocks.mark()
    batch.op(clocks.mark)
    clocks.mark()
    return clocks.readings()


# The calling thread's phases, in the order Batch.op marks them.
PHASES = {
    "bf.fused": ["submit", "synchronize"],
    "mpi4py.fused": ["pack", "exchange", "average"],
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=64, help="tensors per batch (default 64)")
    p.add_argument("--size", type=nb.parse_size, default="16KiB", help="size of each float32 tensor (default 16KiB)")
    p.add_argument("--blocks", type=int, default=10, help="alternating blocks per contender (default 10)")
    p.add_argument("--per-block", type=int, default=20, help="timed batches per block (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before each block (default 3)")
    p.add_argument("--skip-negotiate", action="store_true",
                   help="bf.set_skip_negotiate_stage(True) for the whole run (what negotiation costs)")
    a = p.parse_args()
    if min(a.count, a.blocks, a.per_block) < 1 or a.warmup < 0 or a.size < 4:
        p.error("--count, --blocks and --per-block must be >= 1, --warmup >= 0, --size >= 4 bytes")
    return a


def main(args):
    comm = MPI.COMM_WORLD
    ab.start_bluefog(comm, 1, args.skip_negotiate, "fusion_breakdown", min_ranks=2)
    ctx = nb.Ctx(comm, fresh_recv=False)
    batches = {label: nb.Batch(label, ctx, args.count, args.size // 4) for label in PHASES}
    for label, batch in batches.items():
        ok, details = nb.verify_all(comm, batch)  # (Batch.op: the code that is timed)
        if not ok:
            raise SystemExit(f"{label} returned a wrong average: {'; '.join(details)}")
    samples = {label: [] for label in PHASES}
    exchanges = []  # bf.fused: (all, run by a waiting caller) per batch, per block
    order = list(PHASES)
    for block in range(args.blocks):
        for label in order[block % 2:] + order[:block % 2]:  # each contender first in every other block
            batch = batches[label]
            for _warm in range(args.warmup):
                run(batch)
            comm.Barrier()
            before = get_basics().exchange_counts()
            for _timed in range(args.per_block):
                samples[label].append(run(batch))
            if label == "bf.fused":
                after = get_basics().exchange_counts()
                exchanges.append([(a - b) / args.per_block for a, b in zip(after, before)])
    # Per rank: the median of each column (microseconds); then the largest over the ranks.
    mine = {label: [statistics.median(col) * 1e6 for col in zip(*rows)] for label, rows in samples.items()}
    counts = [statistics.median(col) for col in zip(*exchanges)]
    everyone = comm.gather((mine, counts), root=0)
    ctx.graph_comm.Free()
    if comm.Get_rank() != 0:
        return
    worst = {label: [max(r[0][label][i] for r in everyone) for i in range(len(mine[label]))] for label in mine}
    mode = "skip-negotiate mode" if args.skip_negotiate else "negotiated"
    title = (f"Fused batch ({mode}): {args.count} x {nb.fmt_size(args.size)} float32, {comm.Get_size()} ranks on "
             f"{os.cpu_count()} cores; medians of {args.blocks * args.per_block} batches (largest over the ranks), us")
    rows = []
    for label, phases in PHASES.items():
        w = worst[label]
        named = ", ".join(f"{p} {v:.0f}" for p, v in zip(phases, w))
        rows.append([label] + [f"{v:.0f}" for v in w[-4:]] + [named])
    nb.print_table(title, ["contender", "wall", "CPU (calling thread)", "CPU (process)", "CPU (other threads)",
                           "calling thread's CPU by phase"], rows)
    bf_w, raw_w = worst["bf.fused"], worst["mpi4py.fused"]
    per_op = (bf_w[-2] - raw_w[-2]) / args.count
    print(f"\nbf.fused / mpi4py.fused: wall {bf_w[-4] / raw_w[-4]:.2f}x, process CPU {bf_w[-2] / raw_w[-2]:.2f}x "
          f"({per_op:.1f} us more CPU per tensor and rank)")
    if not args.skip_negotiate:
        total, by_callers = (max(r[1][k] for r in everyone) for k in range(2))
        print(f"bf.fused negotiation exchanges per batch (median over blocks, largest over ranks): {total:.2f}, "
              f"of which run by a waiting caller: {by_callers:.2f}")
    else:
        batches_run, fused_ops = get_basics().skip_mode_counts()
        print(f"skip mode on rank 0, the whole run: {batches_run} agreements; "
              f"{fused_ops} ops ran in batches of several")


if __name__ == "__main__":
    main(parse_args())
