"""The soak benchmark in quick mode on 2 ranks: no resident-memory growth after warm-up and every
result right (the full run, 100,000 + 1,000 operations, is benchmarks/soak.py; see docs/soak.md)."""
import json

from conftest import run_ranks


def test_soak_quick_no_growth(tmp_path):
    out_file = tmp_path / "soak.jsonl"
    out = run_ranks("soak_quick.py", 2, "--json", out_file, timeout=300)
    assert out.count("SOAK OK") == 2, out
    assert "verdict: OK" in out, out
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    summaries = [r for r in records if r["kind"] == "summary"]
    assert {(s["rank"], s["phase"]) for s in summaries} == {(r, p) for r in (0, 1)
                                                           for p in ("small", "large")}
    assert all(s["ok"] and s["wrong"] == 0 for s in summaries), summaries
    samples = [r for r in records if r["kind"] == "sample"]
    assert len(samples) > 100 and all(s["rss_mb"] > 0 for s in samples)
