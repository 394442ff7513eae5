#!/usr/bin/env bash
# The README's main-job command as a fresh clone runs it: scripts/main-job.sh configures its own
# build tree (here one whose parent folders do not exist yet, as build/ in a fresh clone), builds
# actckpt_bench, runs its eleven modes (baseline, classic, sync and async offload, the three
# checkpointed ones again in the reentrant form, offload_saved, the disk tier's ckpt_disk_offload
# and ckpt_disk_spill, and the planned mode) and the
# budget sweep on a tiny model and draws the pictures. Then checks every file the README promises,
# that the table has the eleven modes with consistent memory figures, and that every planned run's
# measured peak fits its budget.
#
#   fresh_build_smoke.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1
work=$2
rm -rf "$work"
mkdir -p "$work"

# Dependencies are installed by the test command itself (scripts/test.sh); a second apt run here
# would only cost time.
ACTCKPT_SKIP_DEPS=1 REPETITIONS=2 ROUNDS=3 JOBS=${JOBS:-2} OMP_NUM_THREADS=1 \
  BUILD_DIR="$work/not/yet/there/build" \
  "$src/scripts/main-job.sh" --out "$work/out" \
  --num_layers=3 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=256 --batch_size=4 --steps=1 \
  >"$work/main-job.log" 2>&1 || { cat "$work/main-job.log"; echo "FAIL: scripts/main-job.sh exited non-zero"; exit 1; }

fail=0
for f in results.md results.json results.csv benchmark.json memory_timeline.json pareto.json pareto.md \
  timeline_baseline.csv timeline_ckpt_classic.csv timeline_ckpt_sync_offload.csv timeline_ckpt_async_offload.csv \
  timeline_offload_saved.csv; do
  [[ -s $work/out/$f ]] || { echo "FAIL: $f missing or empty"; fail=1; }
done
# The pictures need matplotlib (installed by scripts/install-deps.sh); without it the job says so.
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  for f in activation_ckpt_benchmark.png memory_timeline.png memory_budget_pareto.png; do
    # A PNG starts with \x89PNG.
    [[ $(head -c 4 "$work/out/$f" 2>/dev/null | od -An -c | tr -d ' ') == '211PNG' ]] ||
      { echo "FAIL: $f missing or not a PNG"; fail=1; }
  done
fi
grep -q 'done: build' "$work/main-job.log" || { echo "FAIL: no closing line in the log"; fail=1; }
((fail == 0)) || { cat "$work/main-job.log"; exit 1; }

# The table and the JSON behind it: the eleven modes, every checkpointed one below baseline's peak,
# sync offload at or below classic's, async offload at most one stash above it (see below), and
# the Perfetto trace valid JSON with layer phases.
/usr/bin/python3 - "$work/out" <<'PY'
import json, re, sys, pathlib
out = pathlib.Path(sys.argv[1])
results = json.loads((out / "results.json").read_text())
modes = {m["mode"]: m for m in results["modes"]}
want = ["baseline", "ckpt_classic", "ckpt_sync_offload", "ckpt_async_offload", "ckpt_planned"]
reentrant = ["ckpt_classic_reentrant", "ckpt_sync_offload_reentrant", "ckpt_async_offload_reentrant"]
disk_modes = ["ckpt_disk_offload", "ckpt_disk_spill"]
assert sorted(modes) == sorted(want + reentrant + ["offload_saved"] + disk_modes), f"modes in results.json: {sorted(modes)}"
# The disk tier's modes: stashes went to disk and came back (the telemetry), and the spill mode's
# host pool stayed within its budget (a quarter of what async offload stashes), the rest on disk.
for m in disk_modes:
    t = modes[m]["telemetry"]
    assert t["disk_write_bytes"] > 0 and t["disk_read_bytes"] == t["disk_write_bytes"], f"{m}: disk bytes {t['disk_write_bytes']} out, {t['disk_read_bytes']} back"
    d = modes[m]["disk"]
    assert d["disk_peak_MB"] > 0, f"{m}: nothing held on disk"
assert modes["ckpt_disk_spill"]["disk"]["host_within_budget"] is True, f"spill: host pool over its budget: {modes['ckpt_disk_spill']['disk']}"
assert modes["ckpt_disk_spill"]["disk"]["host_budget_MB"] > 0, "spill: no host budget"
# Both checkpoint forms side by side: each mode says which ran, and the comparison is there.
for m in want[1:]:
    assert modes[m]["form"] == "non_reentrant", f"{m}: form {modes[m]['form']}"
for m in reentrant:
    assert modes[m]["form"] == "reentrant", f"{m}: form {modes[m]['form']}"
    assert f"| {m}" in (out / "results.md").read_text(), f"{m} missing from results.md"
compared = [(c["mode"], c["reentrant_mode"]) for c in results["form_comparison"]["modes"]]
assert compared == list(zip(want[1:4], reentrant)), f"form_comparison: {compared}"
assert all(c["peak_pct"] is not None for c in results["form_comparison"]["modes"]), "form_comparison without peaks"
assert "non_reentrant vs reentrant" in (out / "results.md").read_text(), "no line comparing the two forms"
table = (out / "results.md").read_text()
for m in want:
    assert f"| {m}" in table, f"{m} missing from results.md"
    assert modes[m]["ms_per_iter"] > 0, f"{m}: no time"
    assert len(modes[m]["round_ms"]) == 3, f"{m}: {len(modes[m]['round_ms'])} round-robin steps, want ROUNDS=3"
assert "round-robin" in results["time_method"] and "round-robin" in table, "the table's times are not the rounds'"
assert "async vs sync" in table and "async vs classic" in table, "no time comparison between checkpointed modes"
base = modes["baseline"]["peak_MB"]
classic = modes["ckpt_classic"]["peak_MB"]
assert classic < base, f"classic peak {classic} MB not below baseline {base} MB"
for m in ("ckpt_sync_offload", "ckpt_async_offload"):
    assert modes[m]["peak_MB"] < base, f"{m} peak {modes[m]['peak_MB']} MB not below baseline {base} MB"
    assert modes[m]["host_stash_MB"] > 0, f"{m} stashed nothing on the host"
# Sync offload: each stash is on the host before the compute goes on, so its peak never exceeds
# classic's whatever the copy worker's speed. Async offload: where the CPU copy worker lags, a
# stash it has not moved yet is on the device as in classic, and the prefetch of the stash below
# the one being restored (one at a time) can add one stash: at most one stash above classic's
# peak, however loaded the machine (classic's bound alone failed once under load, issue 27).
sync_peak = modes["ckpt_sync_offload"]["peak_MB"]
assert sync_peak <= classic, f"sync offload peak {sync_peak} MB above classic {classic} MB"
t_async = modes["ckpt_async_offload"]["telemetry"]
one_stash_MB = t_async["d2h_bytes"] / t_async["d2h_copies"] / 2**20
async_peak = modes["ckpt_async_offload"]["peak_MB"]
assert async_peak <= classic + one_stash_MB + 1e-4, \
    f"async offload peak {async_peak} MB above classic {classic} MB plus one stash ({one_stash_MB:.4f} MB)"
plan = results["memory_plan"]
assert plan["budget"] == "mid:0.5" and plan["plan"], f"memory_plan: {plan}"
assert plan["fits"] and modes["ckpt_planned"]["peak_MB"] <= plan["budget_MB"], f"planned peak over budget: {plan}"
assert classic <= plan["budget_MB"] < base, f"the main job's budget is not between classic's and baseline's peaks: {plan}"
assert "Memory plan of ckpt_planned" in table, "no plan line under the table"
sweep = json.loads((out / "pareto.json").read_text())
planned = [p for p in sweep["points"] if "budget_MB" in p]
assert len(planned) >= 6, f"{len(planned)} planned budgets in pareto.json"
assert {p["mode"] for p in sweep["points"] if "budget_MB" not in p} == set(want[:4]), "uniform modes missing from pareto.json"
for p in planned:
    assert p["fits"] and p["measured_peak_MB"] <= p["budget_MB"], f"{p['name']}: measured peak over budget: {p}"
    assert len(p["round_ms"]) == sweep["rounds"] and p["ms_per_iter"] > 0, f"{p['name']}: no times"
trace = json.loads((out / "memory_timeline.json").read_text())
events = trace["traceEvents"] if isinstance(trace, dict) else trace
names = {e.get("name", "") for e in events}
assert any(n.startswith("fwd ") for n in names) and any(n.startswith("bwd ") for n in names), \
    "no fwd/bwd phases in memory_timeline.json"
# Offload telemetry: in the table, in results.json for the offloading modes only, and the copies
# on their own track of the trace.
assert "Offload pipeline" in table and "Overlap" in table, "no offload telemetry table in results.md"
for m in ("ckpt_sync_offload", "ckpt_async_offload"):
    t = modes[m].get("telemetry")
    assert t, f"{m}: no telemetry in results.json"
    assert t["d2h_bytes"] > 0 and t["h2d_bytes"] == t["d2h_bytes"], f"{m}: bytes moved {t}"
    assert t["d2h_copies"] > 0 and t["copy_ms"] > 0 and t["d2h_GBps"] > 0, f"{m}: copies {t}"
    assert 0.0 <= t["overlap"] <= 1.0 and t["stall_ms"] >= 0, f"{m}: overlap/stall {t}"
for m in ("baseline", "ckpt_classic"):
    assert "telemetry" not in modes[m], f"{m} moved stashes?"
# offload_saved: no recompute, every saved activation moved each way; the host pool's held bytes
# within 5% of the bytes stashed at the peak (issue 18: stashes placed at their exact sizes). Its
# peak is not compared with baseline's here: on CPU the activations leave only once the copy
# worker has copied them, and on a loaded 2-core machine that worker lags behind a 3-layer model
# (measured: 3.05 MB vs baseline 4.08 MB idle, 5.46 MB under load).
saved = modes["offload_saved"]
assert saved["form"] == "none" and f"| offload_saved" in table, f"offload_saved: form {saved['form']} / row"
t = saved.get("telemetry")
assert t and t["d2h_bytes"] > 0 and t["h2d_bytes"] == t["d2h_bytes"], f"offload_saved: bytes moved {t}"
assert saved["pool_peak_stashed_MB"] > 0, f"offload_saved: nothing stashed {saved}"
assert saved["pool_peak_held_MB"] <= 1.05 * saved["pool_peak_stashed_MB"], \
    f"offload_saved: the host pool held {saved['pool_peak_held_MB']:.3f} MB for {saved['pool_peak_stashed_MB']:.3f} MB stashed at the peak (over 5%)"
assert "Host pool at the peak" in table, "no host pool line under the table"
copies = [e for e in events if e.get("cat") == "copy"]
assert any(e["name"].startswith("D2H ") for e in copies) and any(e["name"].startswith("H2D ") for e in copies), \
    "no device<->host copies on the trace's copies track"
# The LibTorch version is named in the table's header and in results.json.
torch_version = results["environment"]["torch_version"]
assert re.match(r"^[12]\.[0-9]+\.[0-9]+", torch_version), f"torch_version in results.json: {torch_version!r}"
assert table.startswith(f"Benchmark (LibTorch {torch_version}, "), f"table header: {table.splitlines()[0]}"
# The allocator setting is printed and recorded.
assert "Allocator: warm" in table and results["environment"]["allocator"].startswith("warm"), "allocator setting"
import re
log = (out.parent / "main-job.log").read_text()
round_lines = re.findall(r"^\[rounds\s*\] round \d+/3:(.*) ms", log, re.M)
assert len(round_lines) == 3, f"round-robin progress lines: {round_lines}"
for line in round_lines:  # each names the mode it timed
    assert all(m in line for m in want), f"a round's progress line does not name every mode: {line}"
print(f"main-job smoke OK: peaks baseline {base:.2f} MB, classic {classic:.2f} MB, "
      f"sync {modes['ckpt_sync_offload']['peak_MB']:.2f} MB, async {modes['ckpt_async_offload']['peak_MB']:.2f} MB, "
      f"planned {modes['ckpt_planned']['peak_MB']:.2f} MB under {plan['budget_MB']:.2f} MB ({plan['plan']}); "
      f"{len(planned)} budgets swept, all fit")
PY
