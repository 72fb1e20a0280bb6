"""Where the time of a fused batch of neighbor_allreduce goes (a diagnostic, not a test).

Two ways of averaging N tensors with the static topology's in-neighbors run in alternating
blocks within one job (the same two as in neighbor_bench.py's fusion comparison):

  bf.fused      N bf.neighbor_allreduce_nonblocking(...) started back to back, then N
                bf.synchronize(...)
  mpi4py.fused  fusion written by hand in raw MPI: torch.cat of the N tensors, one
                Neighbor_allgather, one weighted average over the whole batch

For every batch each rank records the wall time, the CPU time of the calling thread in each
phase (bf.fused: submitting, synchronizing; mpi4py.fused: packing, exchange, average) and the
CPU time of the whole process; the difference between the last two is the other threads'
(BlueFog's background thread: negotiation, packing, the MPI exchange, completions; a wait may
also run a cycle on the calling thread, BLUEFOG_CALLER_RUNS, which then counts in its
synchronize phase). For bf.fused it also counts the negotiation exchanges per batch.

With more ranks than cores the batch is CPU-bound: its wall time is about (ranks per core) x
(CPU per rank), so the CPU columns say where a faster batch has to come from. Medians over the
batches; each column is the largest median over the ranks.

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

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neighbor_bench as nb  # noqa: E402  (Ctx, Batch, combine, print_table, parse_size, ...)

import bluefog.torch as bf  # noqa: E402
from bluefog.common.basics import get_basics  # noqa: E402


class Clocks:
    """Wall, calling-thread CPU and process CPU time, read together."""

    def __init__(self):
        self.marks = []

    def mark(self):
        self.marks.append((time.perf_counter(), time.thread_time(), time.process_time()))

    def phases(self):
        """Calling-thread CPU of each phase between marks, then the totals: wall, thread, process."""
        m = self.marks
        out = [m[i + 1][1] - m[i][1] for i in range(len(m) - 1)]
        return out + [m[-1][0] - m[0][0], m[-1][1] - m[0][1], m[-1][2] - m[0][2]]


def bf_batch(batch):
    clocks = Clocks()
    clocks.mark()
    handles = [bf.neighbor_allreduce_nonblocking(x, name=n) for x, n in zip(batch.xs, batch.names)]
    clocks.mark()
    batch.outs = [bf.synchronize(h) for h in handles]
    clocks.mark()
    return clocks.phases()


def mpi4py_batch(batch):
    c, clocks = batch.ctx, Clocks()
    clocks.mark()
    torch.cat(batch.xs, out=batch.packed)
    clocks.mark()
    c.graph_comm.Neighbor_allgather(batch.packed.numpy(), batch.recv_all.numpy())
    clocks.mark()
    batch.outs = list(nb.combine(batch.packed, batch.recv_all, c.uniform, batch.weights).split(batch.nelem))
    clocks.mark()
    return clocks.phases()


CONTENDERS = {
    "bf.fused": (bf_batch, ["submit", "synchronize"]),
    "mpi4py.fused": (mpi4py_batch, ["pack", "exchange", "average"]),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=64, help="tensors per batch (default 64)")
    p.add_argument("--size", default="16KiB", help="size of each float32 tensor (default 16KiB)")
    p.add_argument("--blocks", type=int, default=10, help="alternating blocks per contender (default 10)")
    p.add_argument("--per-block", type=int, default=20, help="timed batches per block (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before each block (default 3)")
    p.add_argument("--skip-negotiate", action="store_true",
                   help="bf.set_skip_negotiate_stage(True) for the whole run (what negotiation costs)")
    a = p.parse_args()
    a.size = nb.parse_size(a.size)
    if min(a.count, a.blocks, a.per_block) < 1 or a.warmup < 0 or a.size < 4:
        p.error("--count, --blocks and --per-block must be >= 1, --warmup >= 0, --size >= 4 bytes")
    return a


def main(args):
    comm = MPI.COMM_WORLD
    bf.init()
    torch.set_num_threads(1)
    if args.skip_negotiate:
        bf.set_skip_negotiate_stage(True)
    ctx = nb.Ctx(comm, fresh_recv=False)
    nelem = args.size // 4
    batches = {label: nb.Batch(label, ctx, args.count, nelem) for label in CONTENDERS}
    for label, batch in batches.items():
        ok, details = nb.verify_all(comm, batch)
        if not ok:
            raise SystemExit(f"{label} returned a wrong average: {'; '.join(details)}")
    samples = {label: [] for label in CONTENDERS}
    exchanges = []
    for _ in range(args.blocks):
        for label, (run, _) in CONTENDERS.items():
            batch = batches[label]
            for _ in range(args.warmup):
                run(batch)
            comm.Barrier()
            before = get_basics().exchange_counts()[0]
            for _ in range(args.per_block):
                samples[label].append(run(batch))
            if label == "bf.fused":
                exchanges.append((get_basics().exchange_counts()[0] - before) / args.per_block)
    # Per rank: the median of each column (microseconds); then the largest over the ranks.
    mine = {label: [statistics.median(col) * 1e6 for col in zip(*rows)] for label, rows in samples.items()}
    everyone = comm.gather((mine, statistics.median(exchanges)), root=0)
    if comm.Get_rank() != 0:
        return
    worst = {label: [max(r[0][label][i] for r in everyone) for i in range(len(mine[label]))] for label in mine}
    cores, ranks = os.cpu_count(), comm.Get_size()
    mode = "skip-negotiate mode" if args.skip_negotiate else "negotiated"
    title = (f"Fused batch ({mode}): {args.count} x {nb.fmt_size(args.size)} float32, {ranks} ranks on {cores} cores; "
             f"medians of {args.blocks * args.per_block} batches (largest over the ranks), us")
    rows = []
    for label, (_, phases) in CONTENDERS.items():
        w = worst[label]
        named = ", ".join(f"{p} {v:.0f}" for p, v in zip(phases, w))
        rows.append([label, f"{w[-3]:.0f}", f"{w[-1]:.0f}", f"{w[-2]:.0f}", f"{w[-1] - w[-2]:.0f}", named])
    nb.print_table(title, ["contender", "wall", "CPU (process)", "CPU (calling thread)", "CPU (other threads)",
                        "calling thread's CPU by phase"], rows)
    bf_w, raw_w = worst["bf.fused"], worst["mpi4py.fused"]
    per_op = (bf_w[-1] - raw_w[-1]) / args.count
    print(f"\nbf.fused / mpi4py.fused: wall {bf_w[-3] / raw_w[-3]:.2f}x, process CPU {bf_w[-1] / raw_w[-1]:.2f}x "
          f"({per_op:.1f} us more CPU per tensor and rank)")
    if not args.skip_negotiate:
        print(f"bf.fused negotiation exchanges per batch (median over blocks, largest over ranks): "
              f"{max(r[1] for r in everyone):.2f}")


if __name__ == "__main__":
    arguments = parse_args()
    main(arguments)
    if arguments.skip_negotiate:
        bf.set_skip_negotiate_stage(False)
