"""`fusecomm bench allreduce`: all-reduce bandwidth of fusecomm's engine and of MPI_Allreduce
(through mpi4py) in the same run, with nccl-tests' columns.

The launcher side starts this module on N ranks through `fusecomm run`; the worker side
(`--worker`) measures, checks every result, and rank 0 prints the table and writes JSON lines
and a plot."""
import argparse
import json
import subprocess
import sys
import time

SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
              "G": 1 << 30, "GB": 1 << 30}


def parse_size(text):
    text = str(text).strip().upper()
    digits = text.rstrip("BKMG")
    unit = text[len(digits):]
    if unit not in SIZE_UNITS or not digits:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 8, 64K, 256M)")
    return int(float(digits) * SIZE_UNITS[unit])


def add_arguments(parser):
    parser.add_argument("what", choices=["allreduce", "calibrate"],
                        help="allreduce: bandwidth table; calibrate: measure and print (and "
                             "cache with FUSECOMM_CALIBRATION_FILE) the cost model auto uses")
    parser.add_argument("-np", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("-b", "--min-bytes", type=parse_size, default=8)
    parser.add_argument("-e", "--max-bytes", type=parse_size, default=256 << 20)
    parser.add_argument("-f", "--step-factor", type=int, default=2)
    parser.add_argument("--algorithms", default="ring,mpi,auto",
                        help="engine algorithms, comma-separated (ring, rhd, hierarchical, "
                             "hierarchical_scatter, torus2d, shm, mpi, auto)")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the references: MPI_Allreduce through mpi4py, and Horovod's "
                             "allreduce (horovod.torch) when Horovod is installed")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--local-size", type=int, help="virtual node size (FUSECOMM_LOCAL_SIZE)")
    parser.add_argument("--json", help="write one JSON line per row here")
    parser.add_argument("--plot", help="write a busbw-vs-size PNG here")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")


def run(args):
    """Launcher side: re-runs this module as the worker on args.np ranks."""
    from fusecomm.runner import cli

    worker = [sys.executable, __file__, "--worker"] + sys.argv[
        sys.argv.index(args.what):] if args.what in sys.argv else []
    if not worker:
        worker = [sys.executable, __file__, "--worker", args.what,
                  "-np", str(args.np)]
    launch = ["run", "-np", str(args.np)]
    if args.local_size:
        launch += ["--local-size", str(args.local_size)]
    return cli.main(launch + ["--"] + worker)


def _iterations(nbytes, quick):
    """Timed rounds per size: a byte budget, but never fewer than 20. Small sizes get many
    (600 in quick mode): on a shared 2-core machine the median of 200 rounds still differed by
    up to 7% between five copies of the same implementation."""
    budget = (64 << 20) if quick else (512 << 20)
    return max(20, min(600 if quick else 2000, budget // max(nbytes, 1)))


def _time_interleaved(impls, reset, iters, comm_max, sync, seed):
    """(median, 10th percentile) over iterations of each impl's step time, the step's time being
    the slowest rank's (the collective is done when the last rank is). Interference from other
    threads on a shared machine only ever adds time, so the low percentile is the steadier
    estimate of what the implementation itself costs: across five identical copies of one
    implementation it spread by 1-2% where the median spread by 3-7%. The impls take turns within every
    iteration, so a burst of noise on this shared machine lands on all of them alike instead of
    on whichever happened to be running. Every step starts from `sync` (a barrier), because
    otherwise a step's time depends on its predecessor: a blocking MPI_Allreduce leaves the
    ranks in lock-step, an engine call leaves them skewed, and an impl that happened to follow
    the peers more often looked a few percent faster. The order is still shuffled every
    iteration (the same on every rank: the seed is the size and the iteration, so no order
    repeats across sizes). Two warm-up rounds are dropped."""
    import numpy as np

    samples = [[] for _ in impls]
    for i in range(iters + 2):
        for k in np.random.default_rng([seed, i]).permutation(len(impls)):
            reset()
            sync()
            t0 = time.perf_counter()
            impls[k][1]()
            dt = time.perf_counter() - t0
            if i >= 2:
                samples[k].append(dt)
    slowest = [comm_max(np.array(s)) for s in samples]
    return [(float(np.median(s)), float(np.percentile(s, 10))) for s in slowest]


def worker(argv):
    import numpy as np

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    import fusecomm
    from fusecomm._frontend.validate import dtype_code

    fusecomm.init()
    rank, n = fusecomm.rank(), fusecomm.size()
    if args.what == "calibrate":
        if rank == 0:
            print(f"cost model on {n} ranks (local size {fusecomm.local_size()}):")
            print(fusecomm._core.cost_model())
        fusecomm.shutdown()
        return 0
    dtype = np.dtype(args.dtype)
    algorithms = [a for a in args.algorithms.split(",") if a]

    def comm_max(x):
        return fusecomm.allreduce(x, op=fusecomm.Max, name="bench.max")

    try:
        from mpi4py import MPI
    except ImportError:
        MPI = None
    # Each timed step starts from MPI's own barrier (the engine's barrier would leave the ranks
    # as skewed as any engine call does).
    sync = MPI.COMM_WORLD.Barrier if MPI is not None else fusecomm.barrier
    peer = None
    if not args.no_peer:
        if MPI is not None:
            peer = MPI.COMM_WORLD
        elif rank == 0:
            print("mpi4py is not installed: skipping the MPI_Allreduce reference",
                  file=sys.stderr)
    # MPI has no 16-bit float type: no MPI_Allreduce reference for float16.
    mpi_lacks_type = dtype.kind == "f" and dtype.itemsize == 2
    if peer is not None and mpi_lacks_type and rank == 0:
        print(f"MPI has no {dtype.name} type: skipping the MPI_Allreduce reference",
              file=sys.stderr)
    horovod = None
    if not args.no_peer:
        try:  # a peer only where it is installed; fusecomm never depends on it
            import horovod.torch as horovod
            import torch

            horovod.init()  # joins the MPI that fusecomm initialised
        except ImportError:
            horovod = None
    sizes = []
    size = args.min_bytes
    while size <= args.max_bytes:
        sizes.append(size)
        size *= args.step_factor
    rows = []
    expected_value = n * (n + 1) // 2
    for nbytes in sizes:
        count = max(nbytes // dtype.itemsize, 1)
        buf = np.empty(count, dtype)
        mine = np.full(count, rank + 1, dtype)

        def reset():
            np.copyto(buf, mine)

        impls = [(f"fusecomm:{a}", (lambda a=a: fusecomm.allreduce_(
            buf, op=fusecomm.Sum, name=f"bench.{a}", algorithm=a))) for a in algorithms]
        if peer is not None and not mpi_lacks_type:
            impls.append(("MPI_Allreduce", lambda: peer.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)))
        if horovod is not None:
            tensor = torch.from_numpy(buf)  # shares buf's memory: reset() and the check see it
            impls.append(("horovod", lambda: horovod.allreduce_(tensor, op=horovod.Sum,
                                                               name="bench")))
        iters = _iterations(count * dtype.itemsize, args.quick)
        times = _time_interleaved(impls, reset, iters, comm_max, sync, seed=nbytes)
        for (label, step), (seconds, seconds_p10) in zip(impls, times):
            reset()
            step()  # once more, untimed, to check this impl's result
            wrong = int(np.count_nonzero(buf != expected_value))
            wrong = int(fusecomm.allreduce(np.array([wrong]), op=fusecomm.Sum, name="bench.wrong")[0])
            algbw = count * dtype.itemsize / seconds / 1e9
            row = {"impl": label, "ranks": n, "size": count * dtype.itemsize, "count": count,
                   "type": dtype.name, "redop": "sum", "root": -1, "time_us": seconds * 1e6,
                   "time_p10_us": seconds_p10 * 1e6,
                   "algbw": algbw, "busbw": algbw * 2 * (n - 1) / n, "wrong": wrong,
                   "local_size": fusecomm.local_size(),
                   "picked": (fusecomm._core.auto_algorithm(count * dtype.itemsize,
                                                            dtype_code(dtype.name))
                              if label == "fusecomm:auto" else ""),
                   "predicted_us": (fusecomm._core.predict_seconds(
                       label.split(":")[1], count * dtype.itemsize) * 1e6
                       if label.startswith("fusecomm:") else None)}
            rows.append(row)
            if rank == 0:
                print(format_row(row), flush=True) if len(rows) > 1 else print(
                    header() + "\n" + format_row(row), flush=True)
    if rank == 0:
        if args.json:
            with open(args.json, "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        if args.plot:
            plot(rows, args.plot)
        failed = sum(r["wrong"] for r in rows)
        print(f"# {len(rows)} rows, {failed} wrong elements in total", flush=True)
    if horovod is not None:
        horovod.shutdown()
    fusecomm.shutdown()
    return 0


def header():
    return (f"{'impl':<24}{'size(B)':>12}{'count':>12}{'type':>9}{'redop':>6}{'root':>5}"
            f"{'time(us)':>12}{'p10(us)':>10}{'algbw':>9}{'busbw':>9}{'#wrong':>8}  auto picked")


def format_row(r):
    return (f"{r['impl']:<24}{r['size']:>12}{r['count']:>12}{r['type']:>9}{r['redop']:>6}"
            f"{r['root']:>5}{r['time_us']:>12.1f}{r['time_p10_us']:>10.1f}{r['algbw']:>9.3f}{r['busbw']:>9.3f}"
            f"{r['wrong']:>8}  {r['picked']}")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = [r for r in rows if r["impl"] == impl]
        ax.plot([p["size"] for p in pts], [p["busbw"] for p in pts], marker="o", label=impl)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title(f"all-reduce, {rows[0]['ranks']} ranks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2:]))
    sys.exit("run through `fusecomm bench allreduce`")
