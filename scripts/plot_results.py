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
         "ckpt_classic_reentrant", "ckpt_sync_offload_reentrant", "ckpt_async_offload_reentrant",
         "ckpt_disk_offload", "ckpt_disk_spill"]
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
    "ckpt_disk_offload": "#8c564b",
    "ckpt_disk_spill": "#e377c2",
}
MB = 1048576.0
FWD_COLOR = "#dbe9f6"
BWD_COLOR = "#fde3cc"
OTHER_COLOR = "#eeeeee"


def describe(cfg, env):
    return (
        f"{cfg['device']}, {cfg['dtype']}, {cfg['total_tokens']} tokens "
        f"(batch {cfg['batch_size']} x seq {cfg['seq_len']}), {cfg['num_layers']} layers, "
        f"hidden {cfg['hidden_dim']}, ff {cfg['ff_dim']}; {env['intra_op_threads']} thread"
        + ("" if env["intra_op_threads"] == 1 else "s")
    )


def fmt_delta(value):
    return "" if value is None else f"{value:+.1f}%"


def fmt_mb(value):
    """As fmt_ms, for MB: a tiny configuration's peaks (2.16 and 2.24 MB) must not all print as 2.2."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fmt_ms(value):
    """Three significant digits at least: a tiny configuration's 8.16 ms must not print as 8."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fit_labels(fig, ax, labels):
    """Widen ax's x range until every label (an annotation at the end of a bar) ends inside the
    axes: a label's width in pixels does not change with the range, so with w its share of the
    axes' width and x its anchor, the range must reach x / (1 - w) (plus a margin)."""
    fig.canvas.draw()
    axes_px = ax.get_window_extent().width
    right = ax.get_xlim()[1]
    for label in labels:
        share = (label.get_window_extent().width + 16) / axes_px  # 16 px: the offset and a margin
        anchor = label.xy[0]
        right = max(right, anchor / max(0.05, 1.0 - share))
    ax.set_xlim(0, right)


def plot_benchmark(results, path):
    """Two panels side by side, one horizontal bar per mode, the modes down the shared y axis.

    Horizontal, because the mode names are long (`ckpt_async_offload_reentrant`) and there may be
    nine or more of them: written along the y axis they never collide, and each bar's label sits on
    one line at the end of its bar, in its own row, so labels cannot overlap however many modes
    there are. The figure grows by a fixed height per mode instead of squeezing the bars, which
    keeps the text at the same size in the README whatever the number of modes."""
    modes = [m for m in results["modes"] if m["mode"] in MODES]
    names = [m["mode"] for m in modes]
    colors = [COLORS[n] for n in names]
    y = numpy.arange(len(modes))
    row_height = 0.42  # inches per mode: the memory panel's two bars and their labels fit in it
    # constrained layout sizes the left margin to the longest mode name and keeps the legend
    # below the axes inside the picture
    fig, (ax_t, ax_m) = plt.subplots(1, 2, sharey=True, figsize=(10.5, 2.4 + row_height * len(modes)),
                                     constrained_layout=True)

    times = [m["ms_per_iter"] for m in modes]
    # whiskers: the middle half of the steps the time comes from (how noisy the machine was):
    # the round-robin rounds when they ran, else Google Benchmark's steps
    rounds = all(m.get("round_ms") for m in modes)
    source = "round_ms" if rounds else "step_ms"
    q1 = [float(numpy.percentile(m[source], 25)) for m in modes]
    q3 = [float(numpy.percentile(m[source], 75)) for m in modes]
    low = [max(0.0, t - a) for t, a in zip(times, q1)]
    high = [max(0.0, b - t) for t, b in zip(times, q3)]
    ax_t.barh(y, times, color=colors, height=0.62, xerr=[low, high], capsize=3,
              error_kw={"elinewidth": 1, "ecolor": "#333333"})
    time_labels = []
    for i, (m, h) in enumerate(zip(modes, high)):
        label = f"{fmt_ms(m['ms_per_iter'])} ms"
        if m["time_vs_baseline_pct"] is not None:
            label += f"  {fmt_delta(m['time_vs_baseline_pct'])}"
        time_labels.append(ax_t.annotate(label, (m["ms_per_iter"] + h, i), ha="left", va="center", fontsize=10,
                                         xytext=(4, 0), textcoords="offset points"))
    ax_t.set_xlabel("ms per training step, vs baseline in %\n("
                    + ("median of the round-robin rounds" if rounds else "median step")
                    + "; whiskers: 25th-75th percentile)", fontsize=9)
    ax_t.set_title("Time per training step (lower is better)", fontsize=11)
    # room on the right for the labels (fit_labels widens it further where one needs more)
    ax_t.set_xlim(0, max(t + h for t, h in zip(times, high)) * 1.15)

    width = 0.36
    peaks = [m["peak_MB"] for m in modes]
    hosts = [m["host_stash_MB"] for m in modes]
    floors = [m["floor"]["total_MB"] for m in modes]
    # device peak on the upper half of the row, host stash on the lower half (y grows downwards)
    ax_m.barh(y - width / 2, peaks, height=width, color=colors)
    ax_m.barh(y + width / 2, hosts, height=width, color=colors, alpha=0.35, hatch="//", edgecolor="black",
              linewidth=0.5)
    for i, f in enumerate(floors):
        ax_m.vlines(f, i - width, i, colors="black", linestyles="--", linewidth=1.5)
    memory_labels = []
    for i, m in enumerate(modes):
        label = f"{fmt_mb(m['peak_MB'])} MB"
        if m["peak_vs_baseline_pct"] is not None:
            label += f"  {fmt_delta(m['peak_vs_baseline_pct'])}"
        # past the floor's mark too, when the floor lies above the peak
        memory_labels.append(ax_m.annotate(label, (max(m["peak_MB"], floors[i]), i - width / 2), ha="left",
                                           va="center", fontsize=10, xytext=(4, 0), textcoords="offset points"))
        if hosts[i] > 0:
            memory_labels.append(ax_m.annotate(f"{fmt_mb(hosts[i])} MB host", (hosts[i], i + width / 2), ha="left",
                                               va="center", fontsize=9, xytext=(4, 0), textcoords="offset points",
                                               color="#333333"))
    ax_m.set_xlabel("peak memory, MB = 2^20 bytes (vs baseline in %)", fontsize=9)
    ax_m.set_title("Peak memory per training step (lower is better)", fontsize=11)
    ax_m.set_xlim(0, max(peaks + hosts + floors) * 1.15)
    handles = [Patch(facecolor="#999999", label="device peak"),
               Patch(facecolor="#999999", alpha=0.35, hatch="//", edgecolor="black", linewidth=0.5,
                     label="host stash (offload pool)"),
               Line2D([0], [0], color="black", linestyle="--", label="analytic floor")]

    ax_t.set_yticks(list(y))
    ax_t.set_yticklabels(names, fontsize=10)
    ax_t.set_ylim(len(modes) - 0.5, -0.5)  # the first mode on top, as in the table
    for ax in (ax_t, ax_m):
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=9)
    fig.suptitle("actckpt: activation checkpointing with CPU offload\n" + describe(results["config"], results["environment"]),
                 fontsize=11)
    fit_labels(fig, ax_t, time_labels)
    fit_labels(fig, ax_m, memory_labels)
    # The legend goes below the panels, not over them (inside, it would cover some mode's bar or
    # label), its top just under the lower of the two x labels as drawn: placed by a fixed
    # fraction of the axes instead, it floated an inch below a one-mode picture.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in (ax_t, ax_m))
    top = ax_m.transAxes.inverted().transform((0, bottom - 6))[1]  # 6 px of air
    ax_m.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, top),
                ncol=3, fontsize=9, frameon=False, handlelength=1.6, columnspacing=1.0)
    # bbox_inches="tight" grows the picture to hold the legend under the panels (constrained
    # layout in matplotlib 3.6 does not count a legend placed outside its axes)
    fig.savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.15)
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
