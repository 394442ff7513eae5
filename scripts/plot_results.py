#!/usr/bin/env python3
"""Draws the main job's pictures from the files actckpt_bench wrote (nothing is computed here
that the C++ side did not measure):

  activation_ckpt_benchmark.png  bars: time per training step and peak memory per mode
                                 (results.json)
  memory_timeline.png            one memory timeline per mode: device MB and host stash MB over
                                 one training step, forward / backward phases shaded
                                 (timeline_<mode>.csv)
  memory_budget_pareto.png       the memory planner at several budgets: measured time per step
                                 against measured peak, the uniform modes as points (pareto.json,
                                 written by actckpt_bench --memory_budget=... --pareto_budgets=N)

    /usr/bin/python3 scripts/plot_results.py OUT_DIR

Needs matplotlib (Debian: python3-matplotlib). MB = 2^20 bytes, as in the table.
"""

import csv
import json
import os
import sys

import matplotlib
import numpy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

MODES = ["baseline", "ckpt_classic", "ckpt_sync_offload", "ckpt_async_offload", "offload_saved", "ckpt_planned",
         "ckpt_classic_reentrant", "ckpt_sync_offload_reentrant", "ckpt_async_offload_reentrant"]
COLORS = {
    "baseline": "#7f7f7f",
    "ckpt_classic": "#1f77b4",
    "ckpt_sync_offload": "#ff7f0e",
    "ckpt_async_offload": "#2ca02c",
    "offload_saved": "#d62728",
    "ckpt_planned": "#9467bd",
    "ckpt_classic_reentrant": "#aec7e8",
    "ckpt_sync_offload_reentrant": "#ffbb78",
    "ckpt_async_offload_reentrant": "#98df8a",
}
MB = 1048576.0
FWD_COLOR = "#dbe9f6"
BWD_COLOR = "#fde3cc"
OTHER_COLOR = "#eeeeee"


def describe(cfg, env):
    return (
        f"{cfg['device']}, {cfg['dtype']}, {cfg['total_tokens']} tokens "
        f"(batch {cfg['batch_size']} x seq {cfg['seq_len']}), {cfg['num_layers']} layers, "
        f"hidden {cfg['hidden_dim']}, ff {cfg['ff_dim']}; {env['intra_op_threads']} threads"
    )


def fmt_delta(value):
    return "" if value is None else f"{value:+.1f}%"


def plot_benchmark(results, path):
    modes = [m for m in results["modes"] if m["mode"] in MODES]
    names = [m["mode"] for m in modes]
    x = range(len(modes))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.2))

    times = [m["ms_per_iter"] for m in modes]
    # whiskers: the middle half of the steps the time comes from (how noisy the machine was):
    # the round-robin rounds when they ran, else Google Benchmark's steps
    rounds = all(m.get("round_ms") for m in modes)
    source = "round_ms" if rounds else "step_ms"
    q1 = [float(numpy.percentile(m[source], 25)) for m in modes]
    q3 = [float(numpy.percentile(m[source], 75)) for m in modes]
    low = [max(0.0, t - a) for t, a in zip(times, q1)]
    high = [max(0.0, b - t) for t, b in zip(times, q3)]
    bars = ax_t.bar(x, times, color=[COLORS[n] for n in names], width=0.6, yerr=[low, high], capsize=6,
                    error_kw={"elinewidth": 1, "ecolor": "#333333"},
                    label=("median of the round-robin rounds" if rounds else "median step")
                    + "; whiskers: 25th-75th percentile")
    for bar, m, h in zip(bars, modes, high):
        label = f"{m['ms_per_iter']:.0f} ms"
        if m["time_vs_baseline_pct"] is not None:
            label += f"\n{fmt_delta(m['time_vs_baseline_pct'])} vs baseline"
        ax_t.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height() + h), ha="center", va="bottom",
                      fontsize=9, xytext=(0, 3), textcoords="offset points")
    ax_t.set_ylabel("time per training step (ms)")
    ax_t.set_title("Time per training step (lower is better)")
    ax_t.set_ylim(0, max(t + h for t, h in zip(times, high)) * 1.3)
    ax_t.legend(loc="upper left", fontsize=9)

    width = 0.38
    peaks = [m["peak_MB"] for m in modes]
    hosts = [m["host_stash_MB"] for m in modes]
    floors = [m["floor"]["total_MB"] for m in modes]
    dev = ax_m.bar([i - width / 2 for i in x], peaks, width=width, color=[COLORS[n] for n in names],
                   label="compute-device peak")
    ax_m.bar([i + width / 2 for i in x], hosts, width=width, color=[COLORS[n] for n in names], alpha=0.35,
             hatch="//", edgecolor="black", linewidth=0.5, label="host stash peak (offload pool)")
    for i, f in zip(x, floors):
        ax_m.hlines(f, i - width, i, colors="black", linestyles="--", linewidth=1.5)
    for bar, m in zip(dev, modes):
        label = f"{m['peak_MB']:.1f} MB"
        if m["peak_vs_baseline_pct"] is not None:
            label += f"\n{fmt_delta(m['peak_vs_baseline_pct'])}"
        ax_m.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=9, xytext=(0, 3), textcoords="offset points")
    for i, h in zip(x, hosts):
        if h > 0:
            ax_m.annotate(f"{h:.1f} MB\nhost", (i + width / 2, h), ha="center", va="bottom", fontsize=8,
                          xytext=(0, 2), textcoords="offset points")
    ax_m.set_ylabel("memory (MB = 2^20 bytes)")
    ax_m.set_title("Peak memory per training step (lower is better)")
    ax_m.set_ylim(0, max(peaks + hosts) * 1.25)
    handles, labels = ax_m.get_legend_handles_labels()
    handles.append(Line2D([0], [0], color="black", linestyle="--"))
    labels.append("analytic floor of the mode")
    ax_m.legend(handles, labels, loc="upper right", fontsize=9)

    for ax in (ax_t, ax_m):
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=12)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("actckpt: activation checkpointing with CPU offload\n" + describe(results["config"], results["environment"]),
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def read_timeline(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append((float(r["time_ms"]), int(r["device_bytes"]) / MB, int(r["host_stash_bytes"]) / MB, r["phase"],
                         r["what"]))
    return rows


def phase_spans(rows):
    spans = []
    for t, _, _, phase, _ in rows:
        if spans and spans[-1][0] == phase:
            spans[-1][2] = t
        else:
            if spans:
                spans[-1][2] = t
            spans.append([phase, t, t])
    return spans


def plot_timelines(results, out_dir, path):
    by_mode = {m["mode"]: m for m in results["modes"]}
    modes = [m for m in MODES if os.path.exists(os.path.join(out_dir, f"timeline_{m}.csv"))]
    if not modes:
        return False
    timelines = {m: read_timeline(os.path.join(out_dir, f"timeline_{m}.csv")) for m in modes}

    def highest(names):
        return max(max(max(r[1], r[2]) for r in timelines[n]) for n in names) * 1.15

    # The checkpointed modes share one scale so their shapes compare directly; baseline, often
    # several times higher, gets its own (its title says so).
    checkpointed = [m for m in modes if m != "baseline"]
    shared_top = highest(checkpointed) if checkpointed else None
    fig, axes = plt.subplots(len(modes), 1, figsize=(13, 3.0 * len(modes) + 0.8), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        rows = timelines[mode]
        top = shared_top if mode != "baseline" and shared_top else highest([mode])
        t = [r[0] for r in rows]
        for phase, begin, end in phase_spans(rows):
            if phase.startswith("fwd"):
                color = FWD_COLOR
            elif phase.startswith("bwd"):
                color = BWD_COLOR
            else:
                color = OTHER_COLOR
            ax.axvspan(begin, end, color=color, linewidth=0)
            parts = phase.split()
            if len(parts) == 2 and end - begin > 0.012 * (t[-1] - t[0]):
                ax.text((begin + end) / 2, top * 0.97, parts[1].removeprefix("blocks."), ha="center", va="top", fontsize=7, color="#555555")
        ax.step(t, [r[1] for r in rows], where="post", color=COLORS[mode], linewidth=1.2)
        starts = [r for r in rows if r[4] in ("forward_begin", "backward_begin")]
        ax.plot([r[0] for r in starts], [r[1] for r in starts], color="black", linewidth=0.8, marker="o",
                markersize=3)
        ax.step(t, [r[2] for r in rows], where="post", color="black", linewidth=1.0, linestyle="--")
        m = by_mode.get(mode)
        title = mode
        if m:
            title += f"   (peak {m['peak_MB']:.1f} MB, floor {m['floor']['total_MB']:.1f} MB, host stash {m['host_stash_MB']:.1f} MB)"
        if mode == "baseline" and checkpointed:
            title += "   [own y scale]"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylim(0, top)
        ax.set_xlim(t[0], t[-1])
        ax.set_ylabel("MB")
        ax.grid(alpha=0.25)
    axes[-1, 0].set_xlabel("time within one training step (ms)")
    legend = [
        Line2D([0], [0], color="#444444", linewidth=1.4, label="compute-device memory (MB)"),
        Line2D([0], [0], color="black", linewidth=0.8, marker="o", markersize=3,
               label="device memory as each layer starts (fwd / bwd)"),
        Line2D([0], [0], color="black", linestyle="--", label="host stash in the offload pool (MB)"),
        Patch(color=FWD_COLOR, label="forward of layer i (number on top)"),
        Patch(color=BWD_COLOR, label="backward of layer i (recompute + gradients)"),
        Patch(color=OTHER_COLOR, label="zero_grad / loss / optimizer"),
    ]
    fig.legend(handles=legend, loc="upper center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, 0.985))
    fig.suptitle("Memory over one training step: " + describe(results["config"], results["environment"]),
                 fontsize=11, y=0.995, va="bottom")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_pareto(out_dir, path):
    """Measured time against measured peak: the planner's points joined in budget order, each
    with its budget as a dotted vertical line segment, the uniform modes as single markers."""
    source = os.path.join(out_dir, "pareto.json")
    if not os.path.exists(source):
        return False
    with open(source) as f:
        sweep = json.load(f)
    points = sweep["points"]
    planned = sorted((p for p in points if "budget_MB" in p), key=lambda p: p["budget_MB"])
    uniform = [p for p in points if "budget_MB" not in p]
    fig, ax = plt.subplots(figsize=(10, 6))
    ax.plot([p["measured_peak_MB"] for p in planned], [p["ms_per_iter"] for p in planned], color=COLORS["ckpt_planned"],
            marker="o", linewidth=1.5, label="planner: measured peak and time at each budget")
    for p in planned:
        ax.plot([p["budget_MB"], p["budget_MB"]], [p["ms_per_iter"] * 0.985, p["ms_per_iter"] * 1.015],
                color=COLORS["ckpt_planned"], linestyle=":", linewidth=1.2)
        ax.annotate(p["name"].replace("planned @ ", "") + " " + p.get("code", ""), (p["measured_peak_MB"], p["ms_per_iter"]),
                    fontsize=8, xytext=(6, -3), textcoords="offset points", color="#4b2c6f", family="monospace")
    for p in uniform:
        ax.scatter([p["measured_peak_MB"]], [p["ms_per_iter"]], s=90, marker="s", color=COLORS.get(p["mode"], "black"),
                   zorder=3, label=f"{p['mode']} (uniform)")
    ax.set_xlabel("measured peak memory per step (MB = 2^20 bytes)\n"
                  "plan: one letter per layer, layer 0 first: K keep, C checkpoint, S sync offload, A async offload, "
                  "O offload saved")
    ax.set_ylabel(f"time per training step (ms, median of {sweep['rounds']} round-robin rounds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best", framealpha=0.8)
    ax.set_xlim(0, max(p["measured_peak_MB"] for p in points) * 1.25)
    cfg = sweep["config"]
    ax.set_title("Fit a memory budget: the planner's plans from the smallest feasible budget to baseline's peak\n"
                 f"{cfg['device']}, {cfg['dtype']}, {cfg['num_layers']} layers, hidden {cfg['hidden_dim']}, "
                 f"ff {cfg['ff_dim']}, {cfg['total_tokens']} tokens; dotted tick: the budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    bench_png = os.path.join(out_dir, "activation_ckpt_benchmark.png")
    plot_benchmark(results, bench_png)
    print(f"wrote {bench_png}")
    timeline_png = os.path.join(out_dir, "memory_timeline.png")
    if plot_timelines(results, out_dir, timeline_png):
        print(f"wrote {timeline_png}")
    else:
        print("no timeline_<mode>.csv files (run with --timeline=true): memory_timeline.png not drawn")
    pareto_png = os.path.join(out_dir, "memory_budget_pareto.png")
    if plot_pareto(out_dir, pareto_png):
        print(f"wrote {pareto_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
