#!/usr/bin/python3
"""PyTorch reference for the actckpt CPU overhead / memory acceptance check.

Measures, on CPU, for one network and one LibTorch (Debian python3-torch 1.13):

  * baseline           - the plain (unwrapped) model
  * ckpt               - every block wrapped in
                         torch.utils.checkpoint.checkpoint(block, x, use_reentrant=True)
  * ckpt_nonreentrant  - same with use_reentrant=False
  * save_on_cpu        - no checkpointing: each block runs under
                         torch.autograd.graph.save_on_cpu(), whose hooks move every
                         tensor autograd saves to host memory and back in backward (the
                         Python counterpart of actckpt's SyncOffload). On CPU its pack
                         hook is tensor.cpu(), the tensor itself: the hooks' cost alone,
                         no memory saved (as actckpt's offload saves no RAM on CPU)

and reports median ms per training step (forward + backward + SGD step +
zero_grad(set_to_none=True)) and the peak growth of live CPU tensor memory
during one step (bytes live at the peak minus bytes live at step start),
both also as a percentage over baseline.

Run with Debian's interpreter (the one that has python3-torch), e.g.

    OMP_NUM_THREADS=2 /usr/bin/python3 benchmarks/python_reference/checkpoint_reference.py

See README.md in this folder for the method and for measured numbers.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as tuc
from torch.profiler import ProfilerActivity, profile, record_function

try:  # 1.13: the event tree exposes allocation events with ns timestamps
    from torch._C._profiler import _EventType
except ImportError:  # pragma: no cover - other versions
    _EventType = None


# --------------------------------------------------------------------------
# Network.  Must match what the C++ side builds, op for op.
# --------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, hidden, head_dim):
        super().__init__()
        assert hidden % head_dim == 0, "hidden_dim must be a multiple of head_dim"
        self.hidden = hidden
        self.head_dim = head_dim
        self.heads = hidden // head_dim
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.hidden, dim=-1)
        q = q.reshape(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(B, T, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, T, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        # Causal mask built in every forward (also during recomputation).
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
        att = att.masked_fill(mask, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = att @ v
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, hidden, ff):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ff, bias=False)
        self.fc2 = nn.Linear(ff, hidden, bias=False)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, hidden, head_dim, ff):
        super().__init__()
        self.norm1 = RMSNorm(hidden)
        self.attn = Attention(hidden, head_dim)
        self.norm2 = RMSNorm(hidden)
        self.mlp = MLP(hidden, ff)

    def forward(self, x):
        h = x + self.attn(self.norm1(x))
        return h + self.mlp(self.norm2(h))


class Net(nn.Module):
    def __init__(self, num_layers, hidden, head_dim, ff, mode):
        super().__init__()
        self.blocks = nn.ModuleList(Block(hidden, head_dim, ff) for _ in range(num_layers))
        self.mode = mode

    def forward(self, x):
        for blk in self.blocks:
            if self.mode == "baseline":
                x = blk(x)
            elif self.mode == "ckpt":
                x = tuc.checkpoint(blk, x, use_reentrant=True)
            elif self.mode == "ckpt_nonreentrant":
                x = tuc.checkpoint(blk, x, use_reentrant=False)
            elif self.mode == "save_on_cpu":
                with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                    x = blk(x)
            else:
                raise ValueError(self.mode)
        return x


MODES = ("baseline", "ckpt", "ckpt_nonreentrant", "save_on_cpu")


def make_step(model, opt, x, mode, set_to_none=True):
    def step():
        inp = x
        if mode == "ckpt":
            # Reentrant checkpoint needs at least one *input* that requires
            # grad, otherwise the blocks' parameters get no gradient (1.13
            # only warns).  The first block's input is raw data here, so we do
            # what a real user must do: mark the block input as requiring
            # grad (the equivalent of HF's enable_input_require_grads() on an
            # embedding output).  Costs: dX of the first block is computed and,
            # because inp is a leaf, stored in inp.grad (one B*T*hidden fp32
            # tensor) until the step ends.
            inp = x.detach().requires_grad_()
        out = model(inp)
        loss = out.float().pow(2).mean()
        loss.backward()
        opt.step()
        # set_to_none=True (default here): grads are freed after every step and
        # re-allocated in backward, so they count in the step's growth.
        # --zero_grad inplace: grads stay allocated (zeroed in place), as a
        # LibTorch 1.13 C++ loop calling p.grad().zero_() does.
        opt.zero_grad(set_to_none=set_to_none)
        return loss.detach()

    return step


# --------------------------------------------------------------------------
# Peak memory growth from profiler memory events.
# --------------------------------------------------------------------------
def _allocation_events(prof):
    """[(t_ns, seq, delta_bytes)] for every CPU allocation/free the profiler saw.

    Source: profiler "[memory]" events.  On CPU these are produced by
    c10::ProfiledCPUMemoryReporter -> c10::reportMemoryUsageToProfiler ->
    c10::MemoryReportingInfoBase::reportMemoryUsage (the thread-local memory
    reporting hook), i.e. one event per c10 CPU allocator malloc/free.
    """
    kr = prof.profiler.kineto_results
    evs = []
    if _EventType is not None and hasattr(kr, "experimental_event_tree"):
        stack = list(kr.experimental_event_tree())
        while stack:
            n = stack.pop()
            if n.tag == _EventType.Allocation:
                ef = n.extra_fields
                if ef.device.type == "cpu":
                    evs.append((n.start_time_ns, n.id, ef.alloc_size))
            stack.extend(n.children)
    else:  # fallback: microsecond kineto events
        for i, e in enumerate(kr.events()):
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU:
                evs.append((e.start_us() * 1000, i, e.nbytes()))
    evs.sort(key=lambda t: (t[0], t[1]))
    return evs


def _marker_window(prof, name):
    """(start_ns, end_ns) of the record_function range called `name`."""
    kr = prof.profiler.kineto_results
    stack = list(kr.experimental_event_tree())
    while stack:
        n = stack.pop()
        if n.name == name:
            return n.start_time_ns, n.end_time_ns
        stack.extend(n.children)
    raise RuntimeError("marker %r not found" % name)


def peak_growth_bytes(fn, prime=None):
    """Peak of (live CPU bytes) - (live CPU bytes at start) while fn() runs.

    `prime` (if given) is run first under the same profiler session so that
    blocks it allocates are known to the CPU memory reporter: c10 only reports
    frees of blocks whose allocation it saw while memory profiling was on.
    Only events inside the record_function window around fn() count.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if prime is not None:
            prime()
        with record_function("__measured__"):
            fn()
    t0, t1 = _marker_window(prof, "__measured__")
    live = 0
    peak = 0
    for t, _, d in _allocation_events(prof):
        if t < t0:
            continue
        if t > t1:
            break
        live += d
        peak = max(peak, live)
    return peak, live


def self_test():
    """Known allocations must show up as such."""
    keep = []

    def f():
        a = torch.empty(10_000_000, dtype=torch.uint8)  # +10 MB
        b = torch.empty(5_000_000, dtype=torch.uint8)  # +5 MB -> peak 15 MB
        del a
        keep.append(torch.empty(1_000_000, dtype=torch.uint8))  # survives
        del b

    peak, end = peak_growth_bytes(f)
    # record_function's own 4-byte handle tensor is allocated just before the
    # window opens and freed inside it, hence a tolerance of a few bytes.
    ok = abs(peak - 15_000_000) <= 64 and abs(end - 1_000_000) <= 64
    return {"peak_bytes": peak, "end_bytes": end, "expected_peak": 15_000_000,
            "expected_end": 1_000_000, "ok": ok}


# --------------------------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_cpu_s():
    """System-wide busy CPU seconds (all cores) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    guest = sum(v[8:10]) if len(v) > 9 else 0  # already counted in user/nice
    return (sum(v) - guest - idle) / _CLK_TCK


def _own_cpu_s():
    return time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: all threads, user+sys


class Runner:
    """One model + optimizer + data for one mode (same seed => same init/data)."""

    def __init__(self, mode, a):
        self.mode = mode
        torch.manual_seed(0)
        self.model = Net(a.num_layers, a.hidden_dim, a.head_dim, a.ff_dim, mode)
        seq = a.total_tokens // a.batch_size
        self.x = torch.randn(a.batch_size, seq, a.hidden_dim)  # data, requires_grad=False
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.step = make_step(self.model, self.opt, self.x, mode,
                              set_to_none=(a.zero_grad == "set_to_none"))
        self.times = []
        self.foreign = []  # CPU seconds used by *other* processes during each timed step
        self.cpu = []  # CPU ms used by this process (all threads) during each timed step

    def timed_step(self):
        b0, o0 = _busy_cpu_s(), _own_cpu_s()
        t = time.perf_counter()
        self.step()
        dt = time.perf_counter() - t
        b1, o1 = _busy_cpu_s(), _own_cpu_s()
        self.times.append(dt * 1e3)
        self.cpu.append((o1 - o0) * 1e3)
        self.foreign.append(None if b0 is None else max(0.0, (b1 - b0) - (o1 - o0)))

    def memory(self):
        box = {}

        def measured():
            box["loss"] = self.step()

        peak, end = peak_growth_bytes(measured, prime=self.step)
        return peak, end, float(box["loss"]), self.live_bytes()

    def live_bytes(self):
        """Bytes of the tensors that live between steps: parameters, their
        grads (if kept), the input data, optimizer state (unique storages)."""
        ts = list(self.model.parameters())
        ts += [q.grad for q in self.model.parameters() if q.grad is not None]
        ts.append(self.x)
        for st in self.opt.state.values():
            ts += [v for v in st.values() if torch.is_tensor(v)]
        seen, n = set(), 0
        for t in ts:
            key = t.storage().data_ptr()
            if key not in seen:
                seen.add(key)
                n += t.storage().nbytes()
        return n


def run_all(modes, a):
    """Time all modes, then measure memory of each.

    interleave=True: warm up every mode, then do `steps` rounds, each round
    one timed step of every mode in turn.  Background load (this machine is
    shared) then hits all modes alike, and the per-round ratio
    mode/baseline gives a paired overhead estimate.
    interleave=False: each mode runs warmup+steps back to back.
    """
    runners = [Runner(m, a) for m in modes]
    if a.interleave:
        for r in runners:
            for _ in range(a.warmup):
                r.step()
        for _ in range(a.steps):
            for r in runners:
                r.timed_step()
    else:
        for r in runners:
            for _ in range(a.warmup):
                r.step()
            for _ in range(a.steps):
                r.timed_step()

    results = []
    for r in runners:
        peak, end, loss, live0 = r.memory()
        results.append({
            "mode": r.mode,
            "ms_median": statistics.median(r.times),
            "ms_min": min(r.times),
            "ms_mean": statistics.fmean(r.times),
            "ms_all": r.times,
            "foreign_cpu_s": r.foreign,
            "cpu_ms_median": statistics.median(r.cpu),
            "cpu_ms_all": r.cpu,
            "peak_growth_bytes": peak,
            "peak_growth_mb": peak / 1e6,
            "end_growth_bytes": end,
            # Absolute peak of c10 CPU bytes held by this model/data/optimizer:
            # comparable with a meter started before the model was built.
            "live_at_step_start_bytes": live0,
            "peak_live_bytes": live0 + peak,
            "peak_live_mib": (live0 + peak) / 2**20,
            "loss": loss,
        })
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total_tokens", type=int, default=2048)
    p.add_argument("--num_layers", type=int, default=8)
    p.add_argument("--hidden_dim", type=int, default=256)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--ff_dim", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--zero_grad", choices=("set_to_none", "inplace"), default="set_to_none",
                   help="optimizer.zero_grad(set_to_none=True) after each step (default) or "
                        "set_to_none=False (grads stay allocated, zeroed in place)")
    p.add_argument("--no-interleave", dest="interleave", action="store_false",
                   help="run modes back to back instead of round-robin per step")
    p.add_argument("--json", metavar="OUT", default=None)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            p.error("unknown mode %r" % m)

    st = self_test()
    print("memory-method self-test: peak %.3f MB (expect 15.000), end %.3f MB (expect 1.000) -> %s"
          % (st["peak_bytes"] / 1e6, st["end_bytes"] / 1e6, "OK" if st["ok"] else "FAILED"))

    seq = a.total_tokens // a.batch_size
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    print("torch %s, threads %d (%s), B=%d T=%d hidden=%d head_dim=%d ff=%d layers=%d, "
          "steps=%d warmup=%d, zero_grad=%s" % (
              torch.__version__, torch.get_num_threads(),
              " ".join("%s=%s" % (k, v) for k, v in env.items() if v is not None) or "no OMP env",
              a.batch_size, seq, a.hidden_dim, a.head_dim, a.ff_dim, a.num_layers,
              a.steps, a.warmup, a.zero_grad))

    load_before = os.getloadavg()
    results = run_all(modes, a)
    load_after = os.getloadavg()
    base = next((r for r in results if r["mode"] == "baseline"), None)
    for r in results:
        if base is not None:
            r["time_overhead_pct"] = 100.0 * (r["ms_median"] / base["ms_median"] - 1.0)
            if a.interleave:
                r["paired_overhead_pct"] = 100.0 * (statistics.median(
                    t / b for t, b in zip(r["ms_all"], base["ms_all"])) - 1.0)
            r["cpu_overhead_pct"] = 100.0 * (r["cpu_ms_median"] / base["cpu_ms_median"] - 1.0)
            r["mem_vs_baseline_pct"] = (100.0 * (r["peak_growth_bytes"] / base["peak_growth_bytes"] - 1.0)
                                        if base["peak_growth_bytes"] else None)
    # "Quiet" rounds: no timed step of any mode in that round saw other
    # processes use more than 5% of one core over the step's duration
    # (+20 ms slack for the 10 ms jiffy resolution of /proc/stat).
    quiet = None
    if a.interleave and all(None not in r["foreign_cpu_s"] for r in results):
        quiet = [i for i in range(a.steps)
                 if all(r["foreign_cpu_s"][i] <= 0.05 * r["ms_all"][i] / 1e3 + 0.02 for r in results)]
        for r in results:
            ts = [r["ms_all"][i] for i in quiet]
            r["quiet_ms_median"] = statistics.median(ts) if ts else None
        if base is not None and quiet:
            for r in results:
                r["quiet_overhead_pct"] = 100.0 * (r["quiet_ms_median"] / base["quiet_ms_median"] - 1.0)
                r["quiet_paired_overhead_pct"] = 100.0 * (statistics.median(
                    r["ms_all"][i] / base["ms_all"][i] for i in quiet) - 1.0)

    hdr = "%-18s %9s %9s %11s %11s %10s %13s %9s" % (
        "mode", "ms/iter", "ms(min)", "dT% median", "dT% paired", "peak MB",
        "dMem% vs base", "loss")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        dt = ("%+.1f%%" % r["time_overhead_pct"]) if base else "n/a"
        dp = ("%+.1f%%" % r["paired_overhead_pct"]) if "paired_overhead_pct" in r else "n/a"
        dm = (("%+.1f%%" % r["mem_vs_baseline_pct"])
              if base and r["mem_vs_baseline_pct"] is not None else "n/a")
        print("%-18s %9.1f %9.1f %11s %11s %10.3f %13s %9.6f" % (
            r["mode"], r["ms_median"], r["ms_min"], dt, dp, r["peak_growth_mb"], dm, r["loss"]))
    print("ms/iter = median over %d timed steps (%s); dT%% median = ratio of medians; "
          "dT%% paired = median of per-round ratios; peak MB = peak live-byte growth "
          "in one step, 1 MB = 1e6 bytes" % (a.steps, "interleaved" if a.interleave else "sequential"))
    print("process CPU time per step (user+sys, all threads; less sensitive to other load, "
          "but includes OpenMP spin-waiting):")
    for r in results:
        print("  %-18s cpu median %9.1f ms  dCPU%% %s" % (
            r["mode"], r["cpu_ms_median"],
            ("%+.1f%%" % r["cpu_overhead_pct"]) if base else "n/a"))
    print("absolute peak (live at step start: params, kept grads, input, optimizer state; "
          "+ peak growth), MiB:")
    for r in results:
        print("  %-18s start %8.3f MiB  peak %8.3f MiB" % (
            r["mode"], r["live_at_step_start_bytes"] / 2**20, r["peak_live_mib"]))
    print("loadavg before %.2f / after %.2f (1-min)" % (load_before[0], load_after[0]))
    if quiet is not None:
        print("quiet rounds (other processes < 5%% of a core during every step of the round): "
              "%d of %d" % (len(quiet), a.steps))
        if quiet and base is not None:
            for r in results:
                print("  %-18s quiet median %9.1f ms  dT%% %+.1f%%  paired %+.1f%%" % (
                    r["mode"], r["quiet_ms_median"], r["quiet_overhead_pct"],
                    r["quiet_paired_overhead_pct"]))
        if len(quiet) < a.steps:
            print("  WARNING: the machine was busy during some steps; timings are contaminated. "
                  "Rerun when idle, or trust only the quiet-round figures.")

    if a.json:
        out = {
            "config": {k: getattr(a, k) for k in ("total_tokens", "num_layers", "hidden_dim",
                                                  "head_dim", "ff_dim", "batch_size", "steps",
                                                  "warmup", "threads", "interleave", "zero_grad")},
            "seq_len": seq,
            "torch_version": torch.__version__,
            "python": sys.version.split()[0],
            "env": env,
            "machine": platform.machine(),
            "memory_method": "profiler [memory] events (c10::MemoryReportingInfoBase), "
                             "running sum inside a record_function window, MB = 1e6 bytes",
            "memory_self_test": st,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "quiet_rounds": quiet,
            "results": results,
        }
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
