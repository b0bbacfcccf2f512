"""benchmarks/fusion_timeline.py: its parsing of the engine's Chrome trace into the all-reduces
that ran (fused buckets, per step) on synthetic traces written the way csrc/timeline writes
them, and one short 2-rank run of the whole script on the MLP."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLEAN_ENV

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import fusion_timeline as ft  # noqa: E402


class Trace:
    """Builds the events of one rank's timeline as csrc/timeline/timeline.cc formats them: one
    row (tid) per tensor named by a thread_name record, B/E activities, E without a name."""

    def __init__(self):
        self.events = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
                        "args": {"name": "fusecomm rank 0"}}]
        self.tids = {}

    def tid(self, tensor):
        if tensor not in self.tids:
            self.tids[tensor] = len(self.tids) + 1
            self.events.append({"name": "thread_name", "ph": "M", "pid": 0,
                                "tid": self.tids[tensor], "args": {"name": tensor}})
        return self.tids[tensor]

    def begin(self, tensor, activity, ts, args=None):
        event = {"name": activity, "ph": "B", "pid": 0, "tid": self.tid(tensor), "ts": ts}
        if args is not None:
            event["args"] = args
        self.events.append(event)

    def end(self, tensor, ts, args=None):
        event = {"ph": "E", "pid": 0, "tid": self.tid(tensor), "ts": ts}
        if args is not None:
            event["args"] = args
        self.events.append(event)

    def enter(self, tensors, activity, ts, args=None):
        """Executor::Enter: each member leaves its activity and enters the next, in turn."""
        for k, t in enumerate(tensors):
            self.end(t, ts + k * 0.1)
            self.begin(t, activity, ts + k * 0.1, args)

    def negotiate(self, tensors, ts, queued_at):
        for t in tensors:
            self.begin(t, "NEGOTIATE_allreduce", ts)
        self.enter(tensors, "QUEUE", queued_at)

    def allreduce(self, tensors, nbytes, start, reduce_at, end, cut=False):
        """A fused bucket (copies in and out of the fusion buffer) or a single all-reduce; with
        cut, stop_timeline closed it while it was running."""
        args = {"algorithm": "ring", "bytes": nbytes, "tensors": len(tensors),
                "transport": "mpi"}
        if len(tensors) > 1:
            self.enter(tensors, "MEMCPY_IN_FUSION_BUFFER", start)
            self.enter(tensors, "ALLREDUCE", reduce_at, args)
            self.enter(tensors, "MEMCPY_OUT_FUSION_BUFFER", end - 5)
        else:
            self.enter(tensors, "ALLREDUCE", start, args)
        if not cut:
            for k, t in enumerate(tensors):
                self.end(t, end + k * 0.1)

    def stop(self, ts):
        """stop_timeline: every activity still open ends, marked closed_at_stop."""
        depth = {}
        for e in self.events:
            if e["ph"] in ("B", "E"):
                depth[e["tid"]] = depth.get(e["tid"], 0) + (1 if e["ph"] == "B" else -1)
        names = {tid: t for t, tid in self.tids.items()}
        for tid, d in sorted(depth.items()):
            for _ in range(d):
                self.end(names[tid], ts, {"closed_at_stop": True})


def two_step_trace():
    """Step 0: b and a (ready in that order) fused in one bucket, then c alone; step 1:
    layer-wise, one all-reduce each."""
    t = Trace()
    t.negotiate(["b", "a"], 100, 110)
    t.allreduce(["b", "a"], 24, 120, 130, 200)
    t.negotiate(["c"], 150, 205)
    t.allreduce(["c"], 8, 210, 210, 260)
    for k, name in enumerate(["b", "a", "c"]):
        t.negotiate([name], 1000 + 100 * k, 1010 + 100 * k)
        t.allreduce([name], 8 * (k + 1), 1020 + 100 * k, 1020 + 100 * k, 1050 + 100 * k)
    return t


def test_buckets_per_step_with_members_sizes_and_spans():
    buckets = ft.group_buckets(ft.allreduce_passes(two_step_trace().events))
    assert [(b["step"], b["members"], b["bytes"], b["tensors"]) for b in buckets] == [
        (0, ["b", "a"], 24, 2), (0, ["c"], 8, 1),
        (1, ["b"], 8, 1), (1, ["a"], 16, 1), (1, ["c"], 24, 1)]
    fused = buckets[0]
    # From the first copy into the fusion buffer to the last member's end; negotiation earlier.
    assert (fused["negotiate_us"], fused["start_us"], fused["end_us"]) == (100, 120, 200.1)
    assert (buckets[1]["start_us"], buckets[1]["end_us"]) == (210, 260)
    assert all(b["algorithm"] == "ring" for b in buckets)


def test_written_trace_file_parses_the_same(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(two_step_trace().events, indent=0))
    events = json.loads(path.read_text())
    assert len(ft.group_buckets(ft.allreduce_passes(events))) == 5


def test_an_allreduce_cut_off_by_stop_timeline_is_left_out():
    t = two_step_trace()
    t.negotiate(["b", "a"], 2000, 2010)
    t.allreduce(["b", "a"], 24, 2020, 2030, 2100, cut=True)  # still copying out at the stop
    t.stop(2060)
    buckets = ft.group_buckets(ft.allreduce_passes(t.events))
    assert len(buckets) == 5 and all(b["step"] < 2 for b in buckets)


def test_a_bucket_without_its_members_is_an_error():
    t = Trace()
    t.negotiate(["a", "b"], 0, 10)
    args = {"algorithm": "ring", "bytes": 16, "tensors": 2, "transport": "mpi"}
    t.enter(["a"], "ALLREDUCE", 20, args)
    t.enter(["b"], "ALLREDUCE", 21, dict(args, bytes=8))  # not the same all-reduce
    t.end("a", 30)
    t.end("b", 31)
    with pytest.raises(ValueError, match="does not have its members"):
        ft.group_buckets(ft.allreduce_passes(t.events))
    t = Trace()
    t.negotiate(["a"], 0, 10)
    t.enter(["a"], "ALLREDUCE", 20, args)  # claims 2 tensors, the trace has one
    t.end("a", 30)
    with pytest.raises(ValueError, match="does not have its members"):
        ft.group_buckets(ft.allreduce_passes(t.events))


def test_step_timelines_align_the_trace_with_the_steps_clock():
    """The timeline's origin is at 50.0 s of perf_counter; ts are microseconds after it."""
    buckets = ft.group_buckets(ft.allreduce_passes(two_step_trace().events))
    origin = 50.0

    def step(backward_start_us, backward_end_us, ready_us):
        at = [origin + t * 1e-6 for t in (backward_start_us - 30, backward_start_us,
                                          backward_end_us, backward_end_us + 400)]
        return dict(start=at[0], backward_start=at[1], backward_end=at[2], end=at[3],
                    ready=[origin + t * 1e-6 for t in ready_us])

    record = dict(timeline_origin_s=origin, steps=[step(90, 180, [95, 99, 148]),
                                                   step(990, 1210, [995, 1095, 1195])])
    record["steps"][1]["slowest_backward_end"] = origin + 1230e-6  # the other rank's end
    first, second = ft.step_timelines(record, buckets)
    assert first["backward_ms"] == pytest.approx(0.090)
    assert first["ready_ms"] == pytest.approx([0.005, 0.009, 0.058])
    assert [a["tensors"] for a in first["allreduces"]] == [2, 1]
    assert [t for a in first["allreduces"] for t in (a["start_ms"], a["end_ms"])] == \
        pytest.approx([0.030, 0.1101, 0.120, 0.170])
    assert first["exposed_comm_ms"] == pytest.approx(0.170 - 0.090)  # c ended at 260 us
    assert first["step_time_ms"] == pytest.approx(0.520)
    assert len(second["allreduces"]) == 3
    assert second["exposed_comm_ms"] == pytest.approx((1250 - 1210) * 1e-3)
    assert second["slowest_rank_backward_ms"] == pytest.approx((1230 - 990) * 1e-3)
    assert second["after_slowest_backward_ms"] == pytest.approx((1250 - 1230) * 1e-3)
    assert first["after_slowest_backward_ms"] == pytest.approx(first["exposed_comm_ms"])


def test_two_ranks_on_the_mlp_show_each_plan(tmp_path):
    """The whole script, 2 ranks, 2 recorded steps: three plans; layer-wise runs one all-reduce
    per gradient in every step, threshold fusion merges some (the MLP's backward takes a few
    ms, its gradients come faster than a negotiation round)."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fusion_timeline.py"), "--model", "mlp",
         "--steps", "2", "--out-dir", str(tmp_path), "--timeout", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=800, env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stdout[-6000:]
    results = json.loads((tmp_path / ft.RESULTS).read_text())
    plans = {r["plan"]: r for r in results["plans"]}
    assert sorted(plans) == sorted(ft.PLANS), proc.stdout
    gradients = plans["layerwise"]["gradients"]
    assert gradients == 8, plans["layerwise"]  # 4 Linear layers: weight and bias each
    assert plans["layerwise"]["allreduces_per_step"] == [gradients] * 2, proc.stdout
    assert min(plans["threshold"]["allreduces_per_step"]) < gradients, proc.stdout
    assert plans["mgwfbp"]["plans_made"] >= 1 and plans["mgwfbp"]["planned_buckets"]
    for r in plans.values():
        assert len(r["steps"]) == 2 and r["exposed_comm_ms_median"] is not None, r
        for s in r["steps"]:
            assert len(s["ready_ms"]) == gradients, s
            assert sum(a["tensors"] for a in s["allreduces"]) == gradients, s
    assert (tmp_path / ft.FIGURE).stat().st_size > 10000
