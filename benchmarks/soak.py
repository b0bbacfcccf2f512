"""Soak test: many collectives in a row, resident memory sampled on every rank.

    mpirun -np 2 python benchmarks/soak.py --json out/soak.jsonl --plot docs/soak.png
    mpirun -np 2 python benchmarks/soak.py --quick          # 10,000 + 100, for tests

Two phases, on every rank:
  small  N small all-reduces (8..64 float32 elements), submitted in bursts of 1..16 async
         handles so some fuse. Names come from a pool of cache capacity + 256 names (1280 by
         default; each is used once before sampling starts, so the response cache is full and
         from then on both hits and evicts), plus a never-seen name every 100th operation.
         Every result is checked.
  large  M fused all-reduces of 10 tensors x 1 MiB (10 MiB per step, one grouped_allreduce).
         Every 10th step's results are checked in full, the others at a few elements.

Resident memory (VmRSS from /proc/self/status) is sampled every --sample-every operations
(small) and every --large-sample-every steps (large). Verdict, per rank and phase: after a
warm-up of the first 10% of the phase, RSS must not grow by more than 5% of its post-warm-up
level, nor by more than 20 MB (growth = median of the last 10% of samples minus the median of
the samples just after warm-up, so one allocator hiccup does not decide it). The exit status is
non-zero if any rank fails any phase, or a result is wrong.

Prints a table (rank 0, every rank's numbers), writes JSON lines (--json: a config line, one line
per sample, one summary line per rank and phase) and a matplotlib plot (--plot).
"""
import argparse
import gc
import json
import os
import sys
import time

import numpy as np

GROWTH_FRACTION = 0.05  # of the post-warm-up RSS
GROWTH_BYTES = 20 << 20
WARMUP_FRACTION = 0.10
NAME_POOL = 256
FRESH_EVERY = 100  # every n-th small op uses a never-seen name
MIB_FLOATS = (1 << 20) // 4


def memory_status():
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) * 1024
    if "VmRSS" not in out:
        raise RuntimeError("no VmRSS in /proc/self/status")
    return out


def rss_bytes():
    return memory_status()["VmRSS"]


def _malloc_in_use():
    """Bytes the C heap has handed out and not had back (glibc mallinfo2: uordblks + hblkhd),
    or None off glibc. Unlike RSS it ignores memory the allocator keeps cached, so it tells a
    leak from allocator retention."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks",
                                                       "hblkhd", "usmblks", "fsmblks",
                                                       "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
        fn.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use():
        info = fn()
        return info.uordblks + info.hblkhd

    return in_use


MALLOC_IN_USE = _malloc_in_use()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="fusecomm soak test: RSS over many collectives")
    p.add_argument("--small", type=int, default=100_000, help="small all-reduces (default 100000)")
    p.add_argument("--large", type=int, default=1_000,
                   help="fused 10 x 1 MiB all-reduce steps (default 1000)")
    p.add_argument("--quick", action="store_true", help="10,000 small + 100 large")
    p.add_argument("--sample-every", type=int, default=None,
                   help="small ops between RSS samples (default: small/200)")
    p.add_argument("--large-sample-every", type=int, default=None,
                   help="large steps between RSS samples (default: large/100)")
    p.add_argument("--tensors", type=int, default=10, help="tensors per large step")
    p.add_argument("--tensor-mib", type=float, default=1.0, help="MiB per large tensor")
    p.add_argument("--json", default=None, help="write JSON lines here (rank 0)")
    p.add_argument("--plot", default=None, help="write a PNG plot here (rank 0)")
    p.add_argument("--fresh-every", type=int, default=FRESH_EVERY,
                   help="every n-th small op uses a never-seen name (0: never)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.small, args.large = 10_000, 100
    args.sample_every = args.sample_every or max(1, args.small // 200)
    args.large_sample_every = args.large_sample_every or max(1, args.large // 100)
    return args


class Sampler:
    """RSS samples in a preallocated array, so sampling itself allocates nothing that stays."""

    PHASES = ("small", "large")

    def __init__(self, rank, capacity):
        self.rank = rank
        # phase, op, time_s, rss_mb, heap_mb, anon_mb, file_mb, shmem_mb
        self.data = np.zeros((capacity, 8))
        self.count = 0
        self.t0 = time.perf_counter()

    def sample(self, phase, index, total_index=None):
        gc.collect()
        if self.count == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        heap = MALLOC_IN_USE() / 2 ** 20 if MALLOC_IN_USE else float("nan")
        mem = memory_status()
        mb = [mem.get(k, float("nan")) / 2 ** 20 for k in ("VmRSS", "RssAnon", "RssFile",
                                                            "RssShmem")]
        self.data[self.count] = (self.PHASES.index(phase), index,
                                 time.perf_counter() - self.t0, mb[0], heap, mb[1], mb[2], mb[3])
        self.count += 1

    def last_op(self):
        return int(self.data[self.count - 1, 1])

    @property
    def samples(self):
        """The samples as JSON-ready dicts (built at the end, not while measuring)."""
        out = []
        small_ops = max([int(row[1]) for row in self.data[:self.count] if row[0] == 0] or [0])
        def mb(value):
            return None if np.isnan(value) else round(float(value), 3)

        for ph, op, t, rss, heap, anon, file_, shmem in self.data[:self.count]:
            phase = self.PHASES[int(ph)]
            out.append({"kind": "sample", "rank": self.rank, "phase": phase, "op": int(op),
                        "global_op": int(op) + (small_ops if phase == "large" else 0),
                        "time_s": round(float(t), 4), "rss_mb": mb(rss), "heap_mb": mb(heap),
                        "rss_anon_mb": mb(anon), "rss_file_mb": mb(file_),
                        "rss_shmem_mb": mb(shmem)})
        return out


def name_pool_size(hvd):
    """More names than the response cache holds, so it is full from the start and evicts."""
    try:
        from fusecomm import _core

        capacity = int(_core.config()["cache_capacity"])
    except Exception:  # noqa: BLE001 - an older core without config(): the default
        capacity = 1024
    return max(NAME_POOL, capacity + NAME_POOL)


def run_small(hvd, args, sampler, rng):
    rank, size = hvd.rank(), hvd.size()
    pool_size = name_pool_size(hvd)
    pool = [f"soak.small.{i}" for i in range(pool_size)]
    lengths = rng.integers(8, 65, size=pool_size)  # a name always has the same length
    # Priming, not measured: every pool name once, so the cache is full before sampling starts
    # (its growth up to capacity is bounded, by design, and not a leak).
    for start in range(0, pool_size, 16):
        handles = [hvd.allreduce_async(np.zeros(int(lengths[i]), np.float32), name=pool[i],
                                       op=hvd.Sum) for i in range(start, min(start + 16, pool_size))]
        for handle in handles:
            hvd.synchronize(handle)
    # The same sequence on every rank: seeded identically, drawn identically.
    done, fresh, wrong = 0, 0, 0
    sampler.sample("small", 0)
    next_sample = args.sample_every
    start = time.perf_counter()
    while done < args.small:
        burst = int(min(rng.integers(1, 17), args.small - done))
        picks = rng.choice(pool_size, size=burst, replace=False)
        handles = []
        for k, pick in enumerate(picks):
            op_index = done + k
            if args.fresh_every and op_index % args.fresh_every == args.fresh_every - 1:
                name, n = f"soak.fresh.{op_index}", 8 + op_index % 57
                fresh += 1
            else:
                name, n = pool[pick], int(lengths[pick])
            x = np.full(n, rank + 1 + (op_index % 7), np.float32)
            expected = size * (size + 1) / 2 + size * (op_index % 7)
            handles.append((hvd.allreduce_async(x, name=name, op=hvd.Sum), expected))
        for handle, expected in handles:
            out = hvd.synchronize(handle)
            if not np.all(out == expected):
                wrong += 1
        done += burst
        while done >= next_sample:
            sampler.sample("small", next_sample)
            next_sample += args.sample_every
    elapsed = time.perf_counter() - start
    if sampler.last_op() != done:
        sampler.sample("small", done)
    return {"ops": done, "seconds": elapsed, "ops_per_s": done / elapsed if elapsed else 0.0,
            "fresh_names": fresh, "wrong": wrong}


def run_large(hvd, args, sampler):
    """Each step is one in-place grouped all-reduce of args.tensors tensors, which the engine
    fuses into one 10 MiB all-reduce. In place on the same buffers: the only memory that
    can grow is the library's (and MPI's), not NumPy's output arrays."""
    rank, size = hvd.rank(), hvd.size()
    n = int(args.tensor_mib * MIB_FLOATS)
    tensors = [np.empty(n, np.float32) for _ in range(args.tensors)]
    expected = [size * (size + 1) / 2 + size * t for t in range(args.tensors)]
    wrong = 0
    sampler.sample("large", 0)
    start = time.perf_counter()
    for step in range(1, args.large + 1):
        for t, x in enumerate(tensors):
            x.fill(rank + 1 + t)
        hvd.grouped_allreduce_(tensors, name="soak.large", op=hvd.Sum)
        for t, x in enumerate(tensors):
            if step % 10 == 0:
                ok = bool(np.all(x == expected[t]))
            else:
                ok = x[0] == expected[t] and x[-1] == expected[t] and x[n // 2] == expected[t]
            wrong += 0 if ok else 1
        if step % args.large_sample_every == 0 or step == args.large:
            sampler.sample("large", step)
    elapsed = time.perf_counter() - start
    gbytes = args.large * args.tensors * n * 4 / 1e9
    return {"ops": args.large, "seconds": elapsed, "ops_per_s": args.large / elapsed,
            "algbw_GBps": gbytes / elapsed, "wrong": wrong}


def verdict(samples):
    """Growth of RSS after warm-up for one rank's samples of one phase."""
    rss = np.array([s["rss_mb"] for s in samples])
    ops = np.array([s["op"] for s in samples], dtype=np.float64)
    k = len(rss)
    warm = max(1, int(np.ceil(k * WARMUP_FRACTION)))
    tail = max(1, int(np.ceil(k * WARMUP_FRACTION)))
    after_warmup = float(np.median(rss[warm:warm + tail])) if k > warm else float(rss[-1])
    end = float(np.median(rss[-tail:]))
    growth = end - after_warmup
    post = slice(warm, k)
    slope = 0.0
    if k - warm >= 3 and np.ptp(ops[post]) > 0:
        slope = float(np.polyfit(ops[post], rss[post], 1)[0]) * 1000.0  # MB per 1000 ops
    limit = min(GROWTH_FRACTION * after_warmup, GROWTH_BYTES / 2 ** 20)
    heap = np.array([np.nan if s.get("heap_mb") is None else s["heap_mb"] for s in samples])
    heap_growth = None
    if not np.isnan(heap).any() and k > warm:
        heap_growth = float(np.median(heap[-tail:]) - np.median(heap[warm:warm + tail]))
    return {"heap_growth_mb": heap_growth,"rss_first_mb": float(rss[0]), "rss_after_warmup_mb": after_warmup,
            "rss_last_mb": float(rss[-1]), "rss_max_mb": float(rss.max()),
            "growth_mb": growth, "growth_pct": 100.0 * growth / after_warmup,
            "slope_mb_per_1k_ops": slope, "limit_mb": limit, "ok": bool(growth <= limit)}


def print_table(summaries):
    head = (f"{'rank':>4} {'phase':>5} {'ops':>7} {'ops/s':>8} {'first':>8} {'warm':>8} "
            f"{'last':>8} {'max':>8} {'growth':>8} {'growth%':>8} {'MB/1k':>8} {'limit':>7} "
            f"{'heap':>7} {'wrong':>5}  verdict")
    print("RSS in MB; warm = median just after the first 10% (warm-up); growth = median of the "
          "last 10% - warm; MB/1k = fitted slope after warm-up per 1000 operations; heap = the "
          "same growth for malloc'd bytes in use (glibc mallinfo2), allocator caching aside")
    print(head)
    print("-" * len(head))
    for s in summaries:
        print(f"{s['rank']:>4} {s['phase']:>5} {s['ops']:>7} {s['ops_per_s']:>8.0f} "
              f"{s['rss_first_mb']:>8.1f} {s['rss_after_warmup_mb']:>8.1f} "
              f"{s['rss_last_mb']:>8.1f} {s['rss_max_mb']:>8.1f} {s['growth_mb']:>+8.2f} "
              f"{s['growth_pct']:>+8.2f} {s['slope_mb_per_1k_ops']:>+8.3f} {s['limit_mb']:>7.1f} "
              f"{_fmt(s['heap_growth_mb']):>7} {s['wrong']:>5}  {'OK' if s['ok'] else 'FAIL'}")


def _fmt(value):
    return "n/a" if value is None else f"{value:+.2f}"


def plot(path, all_samples, summaries):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, phase in zip(axes, ("small", "large")):
        for rank in sorted({s["rank"] for s in all_samples}):
            pts = [s for s in all_samples if s["rank"] == rank and s["phase"] == phase]
            ax.plot([p["op"] for p in pts], [p["rss_mb"] for p in pts], marker=".", ms=3,
                    label=f"rank {rank}")
        ops = max((s["op"] for s in all_samples if s["phase"] == phase), default=0)
        ax.axvline(ops * WARMUP_FRACTION, color="grey", ls="--", lw=1, label="end of warm-up")
        ax.set_xlabel("small all-reduces" if phase == "small" else "fused 10 MiB all-reduces")
        ax.set_ylabel("VmRSS (MB)")
        ok = all(s["ok"] for s in summaries if s["phase"] == phase)
        ax.set_title(f"{phase} phase: {'no growth' if ok else 'GROWTH'} after warm-up")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("fusecomm soak: resident memory per rank")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def run(argv=None):
    """Runs the soak on every rank; returns (ok, summaries) on every rank (rank 0 reports)."""
    import fusecomm as hvd

    args = parse_args(argv)
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    sampler = Sampler(rank, args.small // args.sample_every + args.large // args.large_sample_every
                      + 8)
    rng = np.random.default_rng(args.seed)
    small = run_small(hvd, args, sampler, rng)
    large = run_large(hvd, args, sampler)
    samples = sampler.samples
    mine = []
    for phase, stats in (("small", small), ("large", large)):
        v = verdict([s for s in samples if s["phase"] == phase])
        v.update({"kind": "summary", "rank": rank, "phase": phase, **stats})
        v["ok"] = v["ok"] and stats["wrong"] == 0
        mine.append(v)
    everyone = hvd.allgather_object({"samples": samples, "summaries": mine},
                                    name="soak.report")
    summaries = [s for r in everyone for s in r["summaries"]]
    all_samples = [s for r in everyone for s in r["samples"]]
    ok = all(s["ok"] for s in summaries)
    if rank == 0:
        print(f"fusecomm soak: {size} ranks, {small['ops']} small all-reduces "
              f"({small['fresh_names']} under fresh names), {large['ops']} fused steps of "
              f"{args.tensors} x {args.tensor_mib:g} MiB")
        print_table(summaries)
        print(f"bound: growth after warm-up <= min({GROWTH_FRACTION:.0%} of the post-warm-up "
              f"RSS, {GROWTH_BYTES >> 20} MB) per rank and phase")
        print(f"verdict: {'OK' if ok else 'FAIL'}")
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                config = {"kind": "config", "ranks": size, "small": args.small,
                          "large": args.large, "tensors": args.tensors,
                          "tensor_mib": args.tensor_mib, "sample_every": args.sample_every,
                          "large_sample_every": args.large_sample_every,
                          "growth_fraction": GROWTH_FRACTION, "growth_mb": GROWTH_BYTES >> 20,
                          "warmup_fraction": WARMUP_FRACTION, "ok": ok}
                for record in [config] + all_samples + summaries:
                    f.write(json.dumps(record) + "\n")
        if args.plot:
            plot(args.plot, all_samples, summaries)
    sys.stdout.flush()
    hvd.barrier()
    return ok, summaries


def main(argv=None):
    ok, _ = run(argv)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
