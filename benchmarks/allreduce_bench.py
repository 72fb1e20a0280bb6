#!/usr/bin/env python
"""Allreduce latency: BlueFog vs raw MPI (mpi4py) vs torch.distributed/gloo.

All contenders run inside ONE MPI job (same processes, same placement), so they are
compared under identical conditions:

  bf.allreduce   bf.allreduce(t, average=False, name=...)   (new output tensor)
  bf.allreduce_  bf.allreduce_(t, average=False, name=...)  (in place)
  mpi4py         comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM) on a numpy array  (raw MPI: the
                 reference for the targets)
  mpi4py_oop     out = np.empty_like(buf); comm.Allreduce(buf, out, op=MPI.SUM): raw MPI with the
                 same out-of-place semantics as bf.allreduce (a fresh output array per op); context
                 only, to separate the cost of allocating/touching a new output from BlueFog's cost
  gloo           torch.distributed.all_reduce(t)  (SUM, in place, gloo over TCP loopback)

Launch (either):
  mpirun --allow-run-as-root --oversubscribe --mca osc ^ucx -np 4 \\
      .venv/bin/python benchmarks/allreduce_bench.py
  python -m bluefog.run.run -np 4 python benchmarks/allreduce_bench.py

Method (timings on small, oversubscribed machines are noisy):
  * correctness is checked once per size for every contender before timing;
  * every contender gets --warmup untimed ops per size;
  * then --trials rounds; in each round every contender runs one block of
    --iters ops (preceded by a barrier and --rewarm-seconds of untimed ops), and the order of
    the contenders rotates from round to round, so background noise and cache
    effects hit all of them alike;
  * each op is timed individually (perf_counter_ns) on every rank.
Reported per contender and size:
  * median   : the median per-op latency of each rank, then the MAX over ranks
               (the "typical op" as seen by the slowest rank)  [table 1, targets]
  * block    : per round, block wall time / iters (max over ranks), then the
               median over rounds (a throughput view, includes stalls) [table 2]

Timing buffers hold zeros, so repeated in-place sums neither overflow nor hit
denormals; the correctness check uses rank-dependent data.
"""
import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import timedelta

# mpi4py first: it initializes MPI with MPI_THREAD_MULTIPLE (its default), which
# BlueFog then adopts; BlueFog's background thread calls MPI concurrently with
# the mpi4py calls made here.
import mpi4py

mpi4py.rc.thread_level = "multiple"
from mpi4py import MPI  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import bluefog.torch as bf  # noqa: E402

CONTENDERS = ("bf.allreduce", "bf.allreduce_", "mpi4py", "mpi4py_oop", "gloo")
TARGETS = {4 * 1024: 1.3, 16 * 1024 * 1024: 1.1}  # bluefog / raw MPI, from the issue

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
          "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3}


def parse_size(text):
    t = text.strip().upper()
    i = len(t)
    while i > 0 and not (t[i - 1].isdigit() or t[i - 1] == "."):
        i -= 1
    num, unit = t[:i], t[i:].strip()
    if not num or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 4096, 4KiB, 1MiB, 16M)")
    n = int(float(num) * _UNITS[unit])
    if n <= 0 or n % 4:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a positive multiple of 4 bytes (float32)")
    return n


def fmt_size(n):
    for unit, f in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def by_size(nbytes, small, mid, large):
    """Default per-size counts: small (<= 64 KiB), mid (<= 4 MiB) or large messages."""
    return small if nbytes <= 64 * 1024 else mid if nbytes <= 4 * 1024 ** 2 else large


def per_size_option(parser, args, name, n, default=None):
    """--NAME as one value per size (one value is repeated); when not given, default(i)."""
    text = getattr(args, name)
    if text is None:
        return [default(i) for i in range(n)]
    vals = int_list(text)
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n or any(v < 0 for v in vals):
        parser.error(f"--{name} needs one value or one per size ({n}), all >= 0")
    return vals


REWARM_HELP = ("untimed ops before each timed block, for at least this many seconds (default 0.3): "
               "after another contender's block (gloo's ops sleep for milliseconds) the kernel's "
               "scheduler needs a few hundred ms to settle; measured here, BlueFog's 4 KiB ops right "
               "after gloo ran ~2x slower for ~0.3 s. 0: one untimed op only")


def rewarm(comm, op, seconds):
    """Runs op() untimed: at least once, then in rounds of 8 until rank 0 has spent `seconds`.
    Every rank runs the same number of ops (collectives must match)."""
    op()
    start = time.perf_counter()
    while seconds > 0:
        done = comm.bcast(time.perf_counter() - start >= seconds if comm.Get_rank() == 0 else None, root=0)
        if done:
            break
        for _ in range(8):
            op()


def measure(comm, contenders, iters, trials, rewarm_seconds=0.3):
    """Round-robin interleaved timing. Returns this rank's per-op latencies and per-round block
    times (ns), keyed by label."""
    lat = {c.label: [] for c in contenders}
    block = {c.label: [] for c in contenders}
    pc = time.perf_counter_ns
    for trial in range(trials):
        k = trial % len(contenders)
        for c in contenders[k:] + contenders[:k]:   # rotate the order every round
            comm.Barrier()
            rewarm(comm, c.op, rewarm_seconds)      # settle after the other contenders
            comm.Barrier()
            samples = lat[c.label]
            t_block = pc()
            for _ in range(iters):
                t0 = pc()
                c.op()
                samples.append(pc() - t0)
            block[c.label].append((pc() - t_block) / iters)
    return lat, block


def summarize(comm, labels, lat, block, verified, trials):
    """Rank 0 gets {label: stats}; other ranks get None. median = per-rank median, max over ranks."""
    out = {}
    for label in labels:
        medians = comm.gather(statistics.median(lat[label]), root=0)
        blocks = np.empty(trials, dtype=np.float64) if comm.Get_rank() == 0 else None
        comm.Reduce(np.asarray(block[label], dtype=np.float64), blocks, op=MPI.MAX, root=0)
        mins = comm.gather(min(lat[label]), root=0)
        quart = comm.gather([float(q) for q in np.percentile(lat[label], [10, 25, 75, 90])], root=0)
        if comm.Get_rank() == 0:
            out[label] = {
                "verified": verified[label],
                "median_us": max(medians) / 1e3,
                "median_us_per_rank": [m / 1e3 for m in medians],
                "min_us": min(mins) / 1e3,
                "p10_p25_p75_p90_us_per_rank": [[q / 1e3 for q in qs] for qs in quart],
                "block_median_us": float(np.median(blocks)) / 1e3,
                "block_us_per_round": [float(b) / 1e3 for b in blocks],
            }
    return out if comm.Get_rank() == 0 else None


def start_bluefog(comm, torch_threads, skip_negotiate, script, min_ranks=1):
    """The common start of every script: torch threads, bf.init() checked against MPI's
    rank and size, at least `min_ranks` ranks, skip-negotiate mode if asked."""
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(max(1, torch_threads))
    bf.init()
    if bf.size() != size or bf.rank() != rank:
        raise SystemExit(f"bluefog rank/size {bf.rank()}/{bf.size()} != MPI {rank}/{size}")
    if size < min_ranks:
        raise SystemExit(f"{script} needs at least {min_ranks} ranks")
    if skip_negotiate:
        bf.set_skip_negotiate_stage(True)
    return rank, size


def environment(comm):
    """What the results depend on: versions, MPI, threads, settings, load."""
    return {
        "world_size": comm.Get_size(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_thread_level": {MPI.THREAD_SINGLE: "SINGLE", MPI.THREAD_FUNNELED: "FUNNELED",
                             MPI.THREAD_SERIALIZED: "SERIALIZED",
                             MPI.THREAD_MULTIPLE: "MULTIPLE"}.get(MPI.Query_thread(), "?"),
        "bf_mpi_threads_supported": bool(bf.mpi_threads_supported()),
        "torch_threads": torch.get_num_threads(),
        "bf_skip_negotiate": bool(bf.get_skip_negotiate_stage()),
        "loadavg_at_start": list(os.getloadavg()),
        "bluefog_env": {k: v for k, v in os.environ.items() if k.startswith("BLUEFOG_")},
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4KiB,1MiB,16MiB",
                   help="comma-separated message sizes in bytes of float32 data (default: 4KiB,1MiB,16MiB)")
    p.add_argument("--iters", default=None,
                   help="timed ops per contender per round: one value for all sizes, or one per size "
                        "(default by size: 400 up to 64 KiB, 80 up to 4 MiB, else 15)")
    p.add_argument("--warmup", default=None,
                   help="untimed warm-up ops per contender per size: one value, or one per size "
                        "(default by size: 50, 10, 3)")
    p.add_argument("--trials", type=int, default=20,
                   help="round-robin rounds; each round times every contender once (default: 20)")
    p.add_argument("--json-out", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads on every rank (default 1: ranks already oversubscribe the cores)")
    p.add_argument("--mpi4py-buffer", choices=("numpy", "torch"), default="numpy",
                   help="memory for the mpi4py contenders: a numpy array (default) or a torch tensor's "
                        "memory seen through .numpy() (the same kind of buffer BlueFog works on)")
    p.add_argument("--skip-negotiate", action="store_true",
                   help="diagnostic: bf.set_skip_negotiate_stage(True) for the whole run (no per-op "
                        "negotiation round; ops run in enqueue order)")
    p.add_argument("--rewarm-seconds", type=float, default=0.3, help=REWARM_HELP)
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="diagnostic: comma-separated subset of contenders to run (default: all; the "
                        "ratios need bf.allreduce, bf.allreduce_, mpi4py, mpi4py_oop and gloo)")
    p.add_argument("--gloo-timeout", type=float, default=300.0, help="gloo init/op timeout in seconds")
    a = p.parse_args()
    a.sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    unknown = [c for c in a.contenders if c not in CONTENDERS]
    if unknown or not a.contenders:
        p.error(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")

    n = len(a.sizes)
    a.iters = per_size_option(p, a, "iters", n, lambda i: by_size(a.sizes[i], 400, 80, 15))
    a.warmup = per_size_option(p, a, "warmup", n, lambda i: by_size(a.sizes[i], 50, 10, 3))
    if any(v < 1 for v in a.iters):
        p.error("--iters must be >= 1")
    if a.trials < 1:
        p.error("--trials must be >= 1")
    return a


def init_gloo(comm):
    """torch.distributed (gloo) in the same job: rank 0 picks a free loopback port."""
    port = None
    if comm.Get_rank() == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size(), timeout=timedelta(seconds=ARGS.gloo_timeout))
    return port


class Contender:
    """One way of doing a SUM allreduce of `nelem` float32 values, in place on a buffer."""

    def __init__(self, label, nelem, size_bytes):
        self.label = label
        self.name = f"bench.{label}.{size_bytes}"  # bluefog op name, reused every iteration
        if label.startswith("mpi4py"):
            if ARGS.mpi4py_buffer == "torch":
                self._keep = torch.zeros(nelem, dtype=torch.float32)
                self.buf = self._keep.numpy()
            else:
                self.buf = np.zeros(nelem, dtype=np.float32)
        else:
            self.buf = torch.zeros(nelem, dtype=torch.float32)
        self.out = None

    def op(self):
        label = self.label
        if label == "bf.allreduce":
            self.out = bf.allreduce(self.buf, average=False, name=self.name)
        elif label == "bf.allreduce_":
            bf.allreduce_(self.buf, average=False, name=self.name)
        elif label == "mpi4py":
            COMM.Allreduce(MPI.IN_PLACE, self.buf, op=MPI.SUM)
        elif label == "mpi4py_oop":
            self.out = (np.empty_like(self.buf) if ARGS.mpi4py_buffer == "numpy"
                        else torch.empty(self.buf.shape, dtype=torch.float32).numpy())
            COMM.Allreduce(self.buf, self.out, op=MPI.SUM)
        else:
            dist.all_reduce(self.buf)

    def result(self):
        if self.label == "bf.allreduce":
            return self.out.numpy()
        if self.label == "mpi4py":
            return self.buf
        if self.label == "mpi4py_oop":
            return self.out
        return self.buf.numpy()

    def load(self, array):
        if self.label.startswith("mpi4py"):
            self.buf[:] = array
        else:
            self.buf.copy_(torch.from_numpy(array))


def verify(c, nelem):
    """Rank-dependent input; the result must be the exact elementwise sum over ranks."""
    rank, size = COMM.Get_rank(), COMM.Get_size()
    base = (np.arange(nelem, dtype=np.int64) % 251).astype(np.float32) * 0.5 + 1.0
    mine = base + np.float32(rank)
    expected = base * np.float32(size) + np.float32(size * (size - 1) // 2)  # exact in float32
    c.load(mine)
    c.op()
    ok = bool(np.array_equal(c.result(), expected))
    detail = ""
    if not ok:
        bad = int(np.argmax(c.result() != expected))
        detail = f"first mismatch at {bad}: got {c.result()[bad]}, expected {expected[bad]}"
    if ok and c.label in ("bf.allreduce", "mpi4py_oop"):  # out-of-place must leave the input untouched
        src = c.buf if c.label == "mpi4py_oop" else c.buf.numpy()
        if not np.array_equal(src, mine):
            ok, detail = False, f"{c.label} modified its input"
    all_ok = COMM.allreduce(1 if ok else 0, op=MPI.MIN) == 1
    details = COMM.gather(detail, root=0)
    c.load(np.zeros(nelem, dtype=np.float32))
    c.out = None
    return all_ok, [d for d in (details or []) if d]


def ratio(cc, a, b, key):
    """cc[a][key] / cc[b][key], or NaN when either contender was not run (--contenders)."""
    if a not in cc or b not in cc:
        return float("nan")
    return cc[a][key] / cc[b][key]


def cell(c, k, key):
    return f"{c[k][key]:.1f}" if k in c else "-"


def main():
    rank, size = start_bluefog(COMM, ARGS.torch_threads, ARGS.skip_negotiate, "allreduce_bench")
    port = init_gloo(COMM)

    env = dict(environment(COMM), gloo_port=port)
    if rank == 0:
        print(f"# allreduce benchmark: {size} ranks, {env['cpu_count']} cores on {env['hostname']}; "
              f"{env['mpi_library']}; MPI thread level {env['mpi_thread_level']}; torch {env['torch']}",
              flush=True)
        print(f"# sizes {[fmt_size(s) for s in ARGS.sizes]}, iters {ARGS.iters}, warmup {ARGS.warmup}, "
              f"trials {ARGS.trials}, re-warm {ARGS.rewarm_seconds} s; mpi4py buffers: {ARGS.mpi4py_buffer}; "
              f"bf skip-negotiate {env['bf_skip_negotiate']}; "
              f"BLUEFOG_* env {env['bluefog_env'] or 'none'}", flush=True)

    t_start = time.perf_counter()
    results = []
    for si, nbytes in enumerate(ARGS.sizes):
        nelem = nbytes // 4
        iters, warmup = ARGS.iters[si], ARGS.warmup[si]
        cs = [Contender(label, nelem, nbytes) for label in ARGS.contenders]

        verified = {}
        for c in cs:
            ok, details = verify(c, nelem)
            verified[c.label] = ok
            if rank == 0 and not ok:
                print(f"!! {fmt_size(nbytes)} {c.label}: WRONG RESULT: {'; '.join(details)}", flush=True)

        for c in cs:
            for _ in range(warmup):
                c.op()

        lat, block = measure(COMM, cs, iters, ARGS.trials, ARGS.rewarm_seconds)
        row = {"size_bytes": nbytes, "size": fmt_size(nbytes), "iters": iters, "warmup": warmup,
               "trials": ARGS.trials,
               "contenders": summarize(COMM, [c.label for c in cs], lat, block, verified, ARGS.trials)}
        if rank == 0:
            cc = row["contenders"]
            row["ratio_bf_over_mpi4py"] = ratio(cc, "bf.allreduce", "mpi4py", "median_us")
            row["ratio_bf_over_gloo"] = ratio(cc, "bf.allreduce", "gloo", "median_us")
            row["ratio_bf_inplace_over_mpi4py"] = ratio(cc, "bf.allreduce_", "mpi4py", "median_us")
            row["ratio_bf_over_mpi4py_oop"] = ratio(cc, "bf.allreduce", "mpi4py_oop", "median_us")
            row["block_ratio_bf_over_mpi4py"] = ratio(cc, "bf.allreduce", "mpi4py", "block_median_us")
            row["block_ratio_bf_over_gloo"] = ratio(cc, "bf.allreduce", "gloo", "block_median_us")
            print(f"# done {fmt_size(nbytes)} ({time.perf_counter() - t_start:.0f} s elapsed)", flush=True)
        results.append(row)
        del cs

    if rank == 0:
        env["loadavg_at_end"] = list(os.getloadavg())
        report(results, env, time.perf_counter() - t_start)

    COMM.Barrier()
    dist.destroy_process_group()
    bf.shutdown()


def report(results, env, elapsed):
    def line(cells, widths):
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))

    head = ["size", "bf.allreduce", "bf.allreduce_", "mpi4py", "mpi4py_oop", "gloo",
            "bf/mpi4py", "bf_/mpi4py", "bf/gloo", "bf/mpi4py_oop"]
    widths = [8, 13, 14, 10, 11, 10, 10, 10, 8, 14]
    print()
    print("Median latency per op, us (per-rank median of individual ops, max over ranks)")
    print(line(head, widths))
    for r in results:
        c = r["contenders"]
        print(line([r["size"]] + [cell(c, k, "median_us") for k in CONTENDERS]
                   + [f"{r['ratio_bf_over_mpi4py']:.2f}x", f"{r['ratio_bf_inplace_over_mpi4py']:.2f}x",
                      f"{r['ratio_bf_over_gloo']:.2f}x", f"{r['ratio_bf_over_mpi4py_oop']:.2f}x"], widths))
    print()
    print("Block time per op, us (block wall time / iters, max over ranks, median over rounds)")
    head2 = ["size", "bf.allreduce", "bf.allreduce_", "mpi4py", "mpi4py_oop", "gloo", "bf/mpi4py", "bf/gloo"]
    widths2 = [8, 13, 14, 10, 11, 10, 10, 8]
    print(line(head2, widths2))
    for r in results:
        c = r["contenders"]
        print(line([r["size"]] + [cell(c, k, "block_median_us") for k in CONTENDERS]
                   + [f"{r['block_ratio_bf_over_mpi4py']:.2f}x", f"{r['block_ratio_bf_over_gloo']:.2f}x"], widths2))

    bad = [(r["size"], k) for r in results for k, v in r["contenders"].items() if not v["verified"]]
    print()
    print("Correctness: " + ("all contenders returned the exact sum at every size" if not bad else
                             "WRONG RESULTS for " + ", ".join(f"{k} @ {s}" for s, k in bad)))

    targets = []
    for nbytes, limit in TARGETS.items():
        r = next((x for x in results if x["size_bytes"] == nbytes), None)
        if r is None:
            print(f"Target bf.allreduce <= {limit}x mpi4py @ {fmt_size(nbytes)}: not measured (size not in --sizes)")
            continue
        ratio = r["ratio_bf_over_mpi4py"]
        ratio_ip = r["ratio_bf_inplace_over_mpi4py"]
        met = ratio <= limit and r["contenders"].get("bf.allreduce", {}).get("verified", False)
        targets.append({"size_bytes": nbytes, "limit": limit, "ratio": ratio,
                        "ratio_inplace": ratio_ip, "met": met})
        print(f"Target bf.allreduce <= {limit}x mpi4py @ {fmt_size(nbytes)}: {ratio:.2f}x -> "
              f"{'MET' if met else 'NOT MET'}  (in-place bf.allreduce_: {ratio_ip:.2f}x -> "
              f"{'met' if ratio_ip <= limit else 'not met'})")
    print(f"Total benchmark time {elapsed:.0f} s; load average (1/5/15 min) at start "
          f"{'/'.join(f'{x:.1f}' for x in env['loadavg_at_start'])}, at end "
          f"{'/'.join(f'{x:.1f}' for x in env['loadavg_at_end'])} (the {env['world_size']} benchmark "
          f"ranks alone account for about {env['world_size']})")
    sys.stdout.flush()

    if ARGS.json_out:
        doc = {"benchmark": "allreduce_bench", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "env": env, "options": {"sizes": ARGS.sizes, "iters": ARGS.iters, "warmup": ARGS.warmup,
                                       "trials": ARGS.trials, "torch_threads": ARGS.torch_threads,
                                       "mpi4py_buffer": ARGS.mpi4py_buffer,
                                       "skip_negotiate": ARGS.skip_negotiate,
                                       "rewarm_seconds": ARGS.rewarm_seconds},
               "results": results, "targets": targets, "elapsed_s": elapsed}
        with open(ARGS.json_out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"JSON written to {ARGS.json_out}")


if __name__ == "__main__":
    ARGS = parse_args()
    COMM = MPI.COMM_WORLD
    main()
