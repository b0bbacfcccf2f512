"""A timeline figure of fusecomm's fusion plans (threshold fusion, layer-wise all-reduce,
MG-WFBP), one training step each, from the engine's own Chrome-trace timeline.

    python benchmarks/fusion_timeline.py [--model resnet18] [--ranks 2] [--steps 5] [--out-dir .]

One `fusecomm run -np N --fusion-plan P` launch per plan trains a model of
benchmarks/training_models.py on synthetic data. After --warmup steps (MG-WFBP plans after its
5th), rank 0 records the timeline of --steps steps and, per step, when backward started and
ended and when each gradient became ready (a hook right after the DistributedOptimizer's, which
submits the all-reduce). The figure shows each plan's step with the median step time; the JSON
every recorded step. Clocks: the timeline's ts are steady_clock (CLOCK_MONOTONIC on Linux) since
start_timeline(), and perf_counter() is CLOCK_MONOTONIC too (the JSON records it); the trace's
origin is the midpoint of perf_counter() read just before and after start_timeline(), with half
that interval as the alignment's uncertainty."""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from launching import run_launch  # noqa: E402  (benchmarks/)

PLANS = ("threshold", "layerwise", "mgwfbp")
MODELS = ("mlp", "resnet18", "transformer")  # benchmarks/training_models.py's BUILDERS
FIGURE, RESULTS = "fusion_plans_timeline.png", "fusion_plans_timeline.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="resnet18")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="steps recorded on the timeline")
    p.add_argument("--warmup", type=int, default=8, help="steps first (MG-WFBP plans after 5)")
    p.add_argument("--out-dir", default=".", help=f"where {FIGURE} and {RESULTS} go")
    p.add_argument("--batch-size", type=int, default=8, help="samples per rank per step")
    for size, default in (("mlp-width", 512), ("cnn-width", 32), ("seq-len", 32), ("d-model", 64)):
        p.add_argument("--" + size, type=int, default=default,
                       help="model size, as in benchmarks/training_models.py")
    p.add_argument("--timeout", type=int, default=600, help="seconds per launch")
    p.add_argument("--testbed", action="store_true",
                   help="launch across the nodes of the `fusecomm testbed` that is up (root)")
    p.add_argument("--worker", choices=PLANS, help=argparse.SUPPRESS)
    p.add_argument("--trace-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- worker (one rank, under fusecomm run) ----------------------------------------------------

def training_step(args, hvd):
    """A step of the model under the DistributedOptimizer that returns its times
    (time.perf_counter()), and the model's parameter count."""
    import torch
    from training_models import BUILDERS, synthetic_batch  # benchmarks/

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.size()))
    torch.manual_seed(0)
    model = BUILDERS[args.model](args)
    x, y, loss_fn = synthetic_batch(args.model, args, hvd.rank())[:3]
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        named_parameters=model.named_parameters())
    ready = []
    for p in model.parameters():  # after the optimizer's hooks: the all-reduce is submitted
        p.register_post_accumulate_grad_hook(lambda _: ready.append(time.perf_counter()))

    def step():
        ready.clear()
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        backward_start = time.perf_counter()
        loss.backward()
        backward_end = time.perf_counter()
        optimizer.step()
        return dict(start=start, backward_start=backward_start, backward_end=backward_end,
                    end=time.perf_counter(), ready=list(ready))

    return step, sum(p.numel() for p in model.parameters())


def record_worker(args):
    """One rank: trains, then records --steps steps; rank 0 writes the trace and the steps."""
    import fusecomm.torch as hvd
    from fusecomm import _core

    hvd.init()
    plan = _core.fusion_plan()["kind"]
    if plan != args.worker:
        raise RuntimeError(f"launched for the {args.worker} plan, but the engine runs {plan}")
    step, parameters = training_step(args, hvd)
    for _ in range(args.warmup):
        step()
    learned = _core.fusion_plan()
    if plan == "mgwfbp" and learned["plans_made"] == 0:
        raise RuntimeError(f"MG-WFBP has no plan after {args.warmup} steps: raise --warmup")
    hvd.barrier()
    before = time.perf_counter()
    hvd.start_timeline(os.path.join(args.trace_dir, f"{plan}.trace.json"))
    after = time.perf_counter()
    steps = [step() for _ in range(args.steps)]
    hvd.stop_timeline()
    # Every rank's backward ends, on the same clock (CLOCK_MONOTONIC is per machine, and
    # `fusecomm run` here starts every rank on this one): an all-reduce waits for the slowest.
    ends = hvd.allgather_object([s["backward_end"] for s in steps], name="backward_ends")
    for k, s in enumerate(steps):
        s["slowest_backward_end"] = max(rank_ends[k] for rank_ends in ends)
    if hvd.rank() == 0:
        with open(os.path.join(args.trace_dir, f"{plan}.steps.json"), "w") as f:
            json.dump(dict(plan=plan, timeline_origin_s=(before + after) / 2,
                           alignment_uncertainty_ms=(after - before) / 2 * 1e3, steps=steps,
                           planned_buckets=[len(b) for b in learned["buckets"]],
                           plans_made=learned["plans_made"], gradients=len(steps[0]["ready"]),
                           parameters=parameters), f)
    hvd.shutdown()


# ---- trace parsing ----------------------------------------------------------------------------

def allreduce_passes(events):
    """One entry per all-reduce a tensor went through, from the engine's trace events (file
    order): negotiation start, the start of its run (copy into the fusion buffer, or the
    all-reduce), its end (the tensor's last activity), the ALLREDUCE event's args, and whether
    it completed (stop_timeline closes what is still open); in the order of the ALLREDUCE
    begins. `step` counts the tensor's passes: the k-th is in the k-th recorded step."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    open_activity, current, passes, seen = {}, {}, [], {}
    for e in events:
        row = (e.get("pid"), e.get("tid"))
        if e.get("ph") not in ("B", "E") or row[1] == 0:
            continue
        if e["ph"] == "E":
            activity, p = open_activity.pop(row, None), current.get(row)
            if p is None or activity is None or "step" not in p:
                continue
            if e.get("args", {}).get("closed_at_stop"):
                p["complete"] = False
            elif activity in ("ALLREDUCE", "MEMCPY_OUT_FUSION_BUFFER"):
                p["end_us"], p["complete"] = float(e["ts"]), True
            continue
        open_activity[row] = e["name"]
        if e["name"].startswith("NEGOTIATE"):
            current[row] = dict(tensor=names.get(row, str(row)), negotiate_us=float(e["ts"]))
        elif row in current and e["name"] in ("MEMCPY_IN_FUSION_BUFFER", "ALLREDUCE"):
            p = current[row]
            p.setdefault("run_start_us", float(e["ts"]))
            if e["name"] == "ALLREDUCE" and "step" not in p:
                p.update(args=e.get("args", {}), complete=False, step=seen.get(row, 0))
                seen[row] = p["step"] + 1
                passes.append(p)
    return passes


def group_buckets(passes):
    """The fused all-reduces that completed: the executor enters a bucket's members into
    ALLREDUCE one after the other, so in ALLREDUCE-begin order each run of `tensors` passes
    with the same args is one bucket."""
    buckets, i = [], 0
    while i < len(passes):
        first = passes[i]
        members = passes[i:i + int(first["args"]["tensors"])]
        if len(members) < first["args"]["tensors"] or \
                any(m["args"] != first["args"] or m["step"] != first["step"] for m in members):
            raise ValueError(f"the all-reduce of {first['args']} starting with "
                             f"'{first['tensor']}' does not have its members in the trace")
        i += len(members)
        if all(m["complete"] for m in members):
            buckets.append(dict(step=first["step"], bytes=first["args"]["bytes"],
                                tensors=len(members), algorithm=first["args"].get("algorithm"),
                                negotiate_us=min(m["negotiate_us"] for m in members),
                                start_us=min(m["run_start_us"] for m in members),
                                end_us=max(m["end_us"] for m in members),
                                members=[m["tensor"] for m in members]))
    return buckets


def step_timelines(record, buckets):
    """Each recorded step on one axis, in ms since its backward started: backward's end (this
    rank's and the slowest rank's), the gradients' ready times, the all-reduces, and exposed
    communication (end of the last all-reduce minus end of backward)."""
    out = []
    for k, s in enumerate(record["steps"]):
        def ms(t):
            return (t - s["backward_start"]) * 1e3

        trace_at = ms(record["timeline_origin_s"])  # a trace ts of 0, on this step's axis
        runs = [dict(start_ms=trace_at + b["start_us"] * 1e-3,
                     end_ms=trace_at + b["end_us"] * 1e-3, bytes=b["bytes"],
                     tensors=b["tensors"]) for b in buckets if b["step"] == k]
        last_end = max((r["end_ms"] for r in runs), default=None)
        backward_ms = ms(s["backward_end"])
        slowest_ms = ms(s.get("slowest_backward_end", s["backward_end"]))
        out.append(dict(step_time_ms=(s["end"] - s["start"]) * 1e3, backward_ms=backward_ms,
                        slowest_rank_backward_ms=slowest_ms,
                        ready_ms=[ms(t) for t in s["ready"]], allreduces=runs,
                        exposed_comm_ms=None if last_end is None else last_end - backward_ms,
                        after_slowest_backward_ms=None if last_end is None
                        else last_end - slowest_ms))
    return out


def median_of(steps, key):
    values = [s[key] for s in steps if s[key] is not None]
    return statistics.median(values) if values else None


def summarise_plan(record, events):
    steps = step_timelines(record, group_buckets(allreduce_passes(events)))
    median_step = median_of(steps, "step_time_ms")
    return dict({k: record[k] for k in ("plan", "gradients", "parameters", "plans_made",
                                        "planned_buckets", "alignment_uncertainty_ms")},
                allreduces_per_step=[len(s["allreduces"]) for s in steps],
                exposed_comm_ms_median=median_of(steps, "exposed_comm_ms"),
                after_slowest_backward_ms_median=median_of(steps, "after_slowest_backward_ms"),
                step_time_ms_median=median_step,
                representative_step=min(range(len(steps)), key=lambda k: abs(
                    steps[k]["step_time_ms"] - median_step)),
                steps=steps)


# ---- launcher, table, figure ------------------------------------------------------------------

def run_plan(args, plan, trace_dir):
    forwarded = [w for key in ("model", "steps", "warmup", "batch_size", "mlp_width",
                               "cnn_width", "seq_len", "d_model")
                 for w in ("--" + key.replace("_", "-"), str(getattr(args, key)))]
    # The testbed's nodes share this machine's clock and file system, so the traces and the
    # slowest rank's backward end read the same there.
    launcher = ["testbed", "run"] if args.testbed else ["run"]
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", *launcher, "-np", str(args.ranks),
           "--fusion-plan", plan, "--", sys.executable, os.path.abspath(__file__),
           "--worker", plan, "--trace-dir", trace_dir, *forwarded]
    # A lost peer becomes a named error well inside the launch's time limit.
    env = {"FUSECOMM_DATA_TIMEOUT_SECONDS": "60", "FUSECOMM_STALL_SHUTDOWN_SECONDS": "120",
           **os.environ, "PYTHONUNBUFFERED": "1"}
    run_launch(cmd, env, args.timeout, f"the {plan} run on {args.ranks} ranks")
    with open(os.path.join(trace_dir, f"{plan}.trace.json")) as f:
        events = json.load(f)
    with open(os.path.join(trace_dir, f"{plan}.steps.json")) as f:
        return summarise_plan(json.load(f), events)


def print_table(results):
    header = (f"{'plan':<10} {'buckets':>7} {'gradients':>9} {'all-reduces/step':>16} "
              f"{'exposed comm ms':>15} {'step ms':>8}")
    print(header + "\n" + "-" * len(header))
    for r in results:
        buckets = len(r["planned_buckets"]) if r["plan"] == "mgwfbp" else "-"
        exposed = r["exposed_comm_ms_median"]
        print(f"{r['plan']:<10} {buckets:>7} {r['gradients']:>9} "
              f"{statistics.median(r['allreduces_per_step']):>16g} "
              f"{'n/a' if exposed is None else format(exposed, '.2f'):>15} "
              f"{r['step_time_ms_median']:>8.1f}")


def size_text(nbytes):
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.{1 if nbytes < 10 * scale else 0}f} {unit}"
    return f"{nbytes} B"


def draw_step(ax, result, span):
    """One plan's representative step: backward with its gradients' ready ticks above, the
    all-reduces below, exposed communication as an arrow."""
    s = result["steps"][result["representative_step"]]
    ax.broken_barh([(0, s["backward_ms"])], (1.2, 0.5), color="0.82")
    ax.text(s["backward_ms"] / 2, 1.45, "backward", ha="center", va="center", fontsize=8)
    ax.vlines(s["ready_ms"], 1.2, 1.7, color="black", lw=0.7)
    for k, a in enumerate(s["allreduces"]):
        width = a["end_ms"] - a["start_ms"]
        ax.broken_barh([(a["start_ms"], width)], (0.3, 0.6), edgecolor="white", lw=0.3,
                       facecolor=("tab:blue", "tab:cyan")[k % 2])
        if width > 0.05 * span:
            ax.text(a["start_ms"] + width / 2, 0.6, f"{size_text(a['bytes'])}\n"
                    f"{a['tensors']} grad", ha="center", va="center", fontsize=6.5)
    ax.axvline(s["backward_ms"], color="0.5", ls=":", lw=1)
    if s["slowest_rank_backward_ms"] > s["backward_ms"]:
        ax.axvline(s["slowest_rank_backward_ms"], color="tab:orange", ls="--", lw=1)
    if s["exposed_comm_ms"] is not None:
        end = s["backward_ms"] + s["exposed_comm_ms"]
        ax.annotate("", xy=(end, 0.12), xytext=(s["backward_ms"], 0.12),
                    arrowprops=dict(arrowstyle="<->", color="tab:red"))
        ax.text(end, 0.12, f"  exposed comm {s['exposed_comm_ms']:.1f} ms", color="tab:red",
                va="center", fontsize=8)
    ax.set_yticks([0.6, 1.45], ["all-reduces", "gradients\nready"], fontsize=8)
    ax.set_ylim(-0.1, 1.9)
    n = len(s["allreduces"])
    ax.set_title(f"{result['plan']}: step {s['step_time_ms']:.1f} ms, {n} all-reduce"
                 f"{'' if n == 1 else 's'} for {result['gradients']} gradients", loc="left",
                 fontsize=9)


def draw_figure(path, results, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 1.9 * len(results) + 0.9),
                             sharex=True, squeeze=False)
    span = max(max([s["backward_ms"]] + [a["end_ms"] for a in s["allreduces"]])
               for s in (r["steps"][r["representative_step"]] for r in results))
    for ax, result in zip(axes[:, 0], results):
        draw_step(ax, result, span)
    axes[-1, 0].set_xlim(-0.02 * span, span * 1.25)
    axes[-1, 0].set_xlabel(
        "ms since backward started, rank 0, the step with the median step time (ticks: gradient"
        " ready; bars: all-reduce incl. fusion-buffer copies;\ndotted: rank 0's backward ends;"
        " dashed: the slowest rank's)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    args = parse_args()
    if args.worker:
        return record_worker(args)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fusion_timeline_") as trace_dir:
        results = [run_plan(args, plan, trace_dir) for plan in PLANS]
    print_table(results)
    os.makedirs(args.out_dir, exist_ok=True)
    model = f"{args.model} ({results[0]['parameters'] / 1e6:.2f} M parameters)"
    draw_figure(os.path.join(args.out_dir, FIGURE), results,
                f"{model}, {args.ranks} ranks, batch {args.batch_size} per rank")
    with open(os.path.join(args.out_dir, RESULTS), "w") as f:
        json.dump(dict(benchmark="fusion_timeline", command=" ".join(sys.argv),
                       options={k: v for k, v in vars(args).items()
                                if k not in ("worker", "trace_dir")},
                       cpu_cores=os.cpu_count(), load_average_before=load_before,
                       load_average_after=os.getloadavg(),
                       clock=time.get_clock_info("perf_counter").implementation,
                       plans=results), f, indent=1)
    print(f"figure: {os.path.join(args.out_dir, FIGURE)}; results: "
          f"{os.path.join(args.out_dir, RESULTS)}")


if __name__ == "__main__":
    main()
