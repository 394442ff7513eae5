#!/usr/bin/env bash
# Mutation check: does the test suite notice when the library is wrong?
#
# Applies small deliberate faults ("mutants") to include/actckpt/**, one at a time, each to a
# private copy of the tree (build/mutation/src; the working tree is never touched, also on Ctrl-C),
# builds the test executable from only the test files that mutant needs (against Debian's
# LibTorch 1.13; JOBS workers, default 2, each with its own copy and build tree under
# build/mutation/, so ninja recompiles only the mutant's test file), runs
# the test cases that check the behaviour the mutant breaks (in both checkpoint forms where the
# mutant concerns them) and prints a table: mutant, file, tests run, caught or not, time.
# Exits non-zero if any mutant survives, does not compile, or no longer applies (its pattern must
# occur exactly once in the current header: a header that moved on fails loudly, naming the
# mutant, so that the mutant is updated with it).
#
# First, unless --no-baseline, the same selections run on the unmutated tree: each must run at
# least one test case and pass, or a "caught" would mean nothing.
#
#   scripts/mutation-check.sh                      every mutant (all 22; 21 took 11 min on the shared 2-core
#                                                  machine under load, the baseline about 10 min more)
#   scripts/mutation-check.sh --list               the mutants and what each breaks
#   scripts/mutation-check.sh --only keep-n-off-by-one,reuse-fence-skipped --no-baseline
#   JOBS=4 WORK_DIR=/tmp/mutation scripts/mutation-check.sh
#
# Not part of .ci/run (too slow for it); its last result and time are in docs/tests.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 - "$@" <<'PY'
import argparse
import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.getcwd()

# Each mutant: one exact piece of a header (it must occur exactly once) and what replaces it; the
# test files to build (relative to tests/) with the doctest case patterns to run from each (no
# commas: doctest splits filters at them); the checkpoint forms to run them in.
BOTH = ("default", "reentrant")
DEFAULT = ("default",)
REENTRANT = ("reentrant",)
MUTANTS = [
    dict(name="restore-ignores-strides",
         why="a restored stash comes back contiguous instead of with the original's strides",
         file="include/actckpt/offload/tensor_stash.hpp",
         find="return dense_ ? at::empty_strided(sizes_, strides_, tensor_options_) : at::empty(sizes_, tensor_options_);",
         replace="return at::empty(sizes_, tensor_options_);",
         tests=[("unit/offload/test_tensor_stash.cpp", ["tensor stash: restore gives back*"])], forms=DEFAULT),
    dict(name="restore-not-re-expanded",
         why="an expanded stash comes back with its unexpanded sizes",
         file="include/actckpt/offload/tensor_stash.hpp",
         find="    if (!expanded_sizes_.empty()) result = result.expand(expanded_sizes_);\n",
         replace="",
         tests=[("unit/offload/test_tensor_stash.cpp", ["tensor stash: restore gives back*"])], forms=DEFAULT),
    dict(name="checksum-compare-dropped",
         why="a stash's checksum is taken but never compared when it is back",
         file="include/actckpt/offload/tensor_stash.hpp",
         find="      if (checksum_) verify_checksum(result);\n",
         replace="",
         tests=[("unit/offload/test_tensor_stash.cpp", ["stash checksums*"])], forms=DEFAULT),
    dict(name="size-threshold-flipped",
         why="min_offload_bytes read as an exclusive bound: a stash of exactly that size stays",
         file="include/actckpt/offload/tensor_stash.hpp",
         find="bytes_ > 0 && bytes_ >= options_.min_offload_bytes",
         replace="bytes_ > 0 && bytes_ > options_.min_offload_bytes",
         tests=[("unit/offload/test_tensor_stash.cpp", ["tensor stash: a stash of exactly min_offload_bytes*"])],
         forms=DEFAULT),
    dict(name="keep-n-off-by-one",
         why="async offload keeps N+1 stashes on the device",
         file="include/actckpt/offload/tensor_stash.hpp",
         find="context_->stack().push(this, options_.keep_on_device);",
         replace="context_->stack().push(this, options_.keep_on_device + 1);",
         tests=[("unit/offload/test_stash_stack.cpp", ["async offload keeps the newest N stashes*"])], forms=DEFAULT),
    dict(name="device-copy-kept",
         why="an offloaded stash keeps its device tensor (the offload frees nothing)",
         file="include/actckpt/offload/tensor_stash.hpp",
         find="    fence_host_buffer(offload_ticket_);\n    device_.reset();\n",
         replace="    fence_host_buffer(offload_ticket_);\n",
         tests=[("unit/policy/test_offload_policies.cpp", ["offloading policies release the device copy*"])],
         forms=DEFAULT),
    dict(name="prefetch-wrong-stash",
         why="taking a stash prefetches the one above it (already consumed) instead of the one below",
         file="include/actckpt/offload/stash_stack.hpp",
         find="if (it != entries_.begin()) (*std::prev(it))->begin_prefetch();",
         replace="if (it != entries_.end()) (*it)->begin_prefetch();",
         tests=[("unit/offload/test_stash_stack.cpp", ["stash stack: take prefetches*",
                                                      "async offload: while layer i recomputes*"])],
         forms=DEFAULT),
    dict(name="reuse-fence-skipped",
         why="the host pool hands out bytes a device copy may still read or write",
         file="include/actckpt/offload/host_buffer_pool.hpp",
         find="      for (auto& f : fences) f->run();\n",
         replace="      for (auto& f : fences) (void)f;\n",
         tests=[("unit/offload/test_host_buffer_pool.cpp", ["host pool: a freed range's fence runs*"])], forms=DEFAULT),
    dict(name="pool-block-not-coalesced",
         why="a freed range does not merge with the free range after it (fragmentation)",
         file="include/actckpt/offload/free_ranges.hpp",
         find="if (next != free_.end() && next->first == begin + size) {",
         replace="if (false && next != free_.end() && next->first == begin + size) {",
         tests=[("unit/offload/test_host_buffer_pool.cpp", ["host pool: freed ranges coalesce*"])], forms=DEFAULT),
    dict(name="pool-block-not-returned",
         why="a freed range never goes back to its slab's free list (the pool grows every step)",
         file="include/actckpt/offload/host_buffer_pool.hpp",
         find="    slab->free.give(offset, capacity);\n",
         replace="",
         tests=[("unit/offload/test_host_buffer_pool.cpp", ["the host pool is reused across steps*"])], forms=DEFAULT),
    dict(name="copies-out-of-order",
         why="the copy worker runs the newest queued copy first (a prefetch before its offload)",
         file="include/actckpt/offload/copy_engine.hpp",
         find="        job.emplace(std::move(queue_.front()));\n        queue_.pop_front();\n",
         replace="        job.emplace(std::move(queue_.back()));\n        queue_.pop_back();\n",
         tests=[("unit/offload/test_copy_engine.cpp", ["copy engine: copies run in the order submitted*"])],
         forms=DEFAULT),
    dict(name="rng-not-replayed",
         why="the recompute draws from the caller's generator state, not the forward's (other dropout masks)",
         file="include/actckpt/replay/rng_state.hpp",
         find="    forked.apply();\n",
         replace="    (void)forked;\n",
         tests=[("unit/replay/test_rng_state.cpp", ["rng state: the replay guard*"])], forms=DEFAULT),
    dict(name="rng-caller-not-restored",
         why="after a recompute the caller's generators are left at the forward's state",
         file="include/actckpt/replay/rng_state.hpp",
         find="~RngReplayGuard() { callers_.apply(); }",
         replace="~RngReplayGuard() {}",
         tests=[("unit/replay/test_rng_state.cpp", ["rng state: the replay guard*"])], forms=DEFAULT),
    dict(name="autocast-not-replayed-reentrant",
         why="the reentrant recompute runs under the caller's autocast state",
         file="include/actckpt/core/reentrant.hpp",
         find="AutocastReplayGuard autocast(record->autocast());",
         replace="AutocastReplayGuard autocast(AutocastState::current());",
         tests=[("unit/wrap/test_checkpointed.cpp", ["autocast: the recompute runs under the forward's state*"])],
         forms=REENTRANT),
    dict(name="autocast-not-replayed-non-reentrant",
         why="the non-reentrant recompute runs under the caller's autocast state",
         file="include/actckpt/core/non_reentrant.hpp",
         find="AutocastReplayGuard autocast(record_->autocast());",
         replace="AutocastReplayGuard autocast(AutocastState::current());",
         tests=[("unit/wrap/test_checkpointed.cpp", ["autocast: the recompute runs under the forward's state*"])],
         forms=DEFAULT),
    dict(name="buffer-replay-skipped",
         why="what the recompute does to BatchNorm's running statistics sticks (they change twice per step)",
         file="include/actckpt/replay/buffer_replay.hpp",
         find="      if (buffers_[i].defined()) buffers_[i].copy_(saved_[i]);\n",
         replace="      (void)i;\n",
         tests=[("unit/wrap/test_functional.cpp", ["functional: checkpoint_sequential over segments*"])],
         forms=DEFAULT),
    dict(name="input-mutation-check-dropped",
         why="an input changed in place after the forward stashed it is recomputed from silently",
         file="include/actckpt/core/checkpoint_record.hpp",
         find="if (!unaffected && input_versions_[i].changed()) {",
         replace="if (false && !unaffected && input_versions_[i].changed()) {",
         tests=[("unit/base/test_errors.cpp", ["errors: an input modified in place after the forward*"])],
         forms=REENTRANT),
    dict(name="argument-view-not-copied",
         why="a std::span argument is kept as the caller's view, read again by the recompute after it is gone",
         file="include/actckpt/layer/argument_storage.hpp",
         find="  using stored_type = std::vector<std::remove_cv_t<E>>;\n",
         replace="  using stored_type = std::span<E, N>;\n",
         tests=[("integration/test_view_arguments.cpp", ["std::span<const float> argument freed after the call*"])],
         forms=BOTH),
    dict(name="offload-saved-prefetch-dropped",
         why="offload-saved's backward of layer i no longer prefetches layer i-1's saved tensors",
         file="include/actckpt/core/offload_saved.hpp",
         find="    if (previous) previous->begin_prefetch();\n",
         replace="    (void)previous;\n",
         tests=[("unit/core/test_offload_saved.cpp", ["offload-saved async: the backward of layer i prefetches*",
                                                     "offload-saved async: every saved tensor of layer i-1*"])],
         forms=DEFAULT),
    dict(name="planner-recompute-cost-dropped",
         why="the planner's cost model charges checkpointing no recompute time",
         file="include/actckpt/planner/cost_model.hpp",
         find="case LayerChoice::checkpoint: r.extra_ms = ckpt_extra; break;",
         replace="case LayerChoice::checkpoint: break;",
         tests=[("unit/planner/test_planner.cpp", ["planner: offload saved's cost terms*"])], forms=DEFAULT),
    dict(name="planner-copy-back-cost-dropped",
         why="the planner's cost model forgets offload-saved's copy back that its backward cannot hide",
         file="include/actckpt/planner/cost_model.hpp",
         find="std::max(0.0, copy_ms(l.saved_bytes, h2d_) - backward_window);",
         replace="0.0;",
         tests=[("unit/planner/test_planner.cpp", ["planner: offload saved's cost terms*"])], forms=DEFAULT),
    dict(name="planner-counts-plan-dependent-releases",
         why="the profiler keeps releases that depend on the plan in a chain's figures (a U-Net plan predicted 512 KiB low)",
         file="include/actckpt/planner/profiler.hpp",
         find="  if (meter.tracks_releases()) retain_plan_dependent_releases(profile, runs);\n",
         replace="",
         tests=[("unit/planner/test_planner.cpp", ["planner: a U-Net whose decoder*"])], forms=DEFAULT),
]


def fail(message):
    print(f"[mutation-check] error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def log(message):
    print(f"[mutation-check] {message}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(prog="scripts/mutation-check.sh")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--only", default="", help="comma-separated mutant names")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selections")
    p.add_argument("--timeout", type=int, default=600, help="seconds per test run (a hang counts as caught)")
    return p.parse_args()


def selected(args):
    names = {m["name"] for m in MUTANTS}
    if len(names) != len(MUTANTS):
        fail("two mutants share a name")
    if not args.only:
        return MUTANTS
    wanted = [n for n in args.only.split(",") if n]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        fail(f"unknown mutant(s): {', '.join(unknown)} (see --list)")
    return [m for m in MUTANTS if m["name"] in wanted]


def check_patterns(mutants):
    """Every mutant must apply to the current headers: exactly one match, else stop before building."""
    for m in mutants:
        text = open(os.path.join(REPO, m["file"])).read()
        count = text.count(m["find"])
        if count != 1:
            what = "pattern not found" if count == 0 else f"pattern matches {count} times"
            fail(f"mutant '{m['name']}': {what} in {m['file']}:\n  {m['find']!r}\n"
                 "update the mutant in scripts/mutation-check.sh to the header's current code")
        for test_file, _ in m["tests"]:
            if not os.path.isfile(os.path.join(REPO, "tests", test_file)):
                fail(f"mutant '{m['name']}': test file tests/{test_file} does not exist")


def sync_tree(src, dst):
    """dst becomes a copy of the files git knows in src (tracked and untracked, not ignored).
    A file whose content differs is rewritten (a fresh mtime, so ninja rebuilds what includes it);
    equal files are left alone, so a warm build tree rebuilds only what changed."""
    out = subprocess.run(["git", "-C", src, "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                         capture_output=True).stdout.decode()
    files = {f for f in out.split("\0") if f and os.path.isfile(os.path.join(src, f))
             and not os.path.islink(os.path.join(src, f))}
    for f in sorted(files):
        s, d = os.path.join(src, f), os.path.join(dst, f)
        if os.path.isfile(d) and filecmp.cmp(s, d, shallow=False):
            continue
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(s, d)
        shutil.copymode(s, d)
    for root, _, names in os.walk(dst):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), dst)
            if rel not in files:
                os.remove(os.path.join(root, n))


# Child processes (cmake, ninja, the tests) run in sessions of their own, so that an interrupted
# run can end each one with everything it started (a compiler left behind by ninja, a test's
# threads) by its process group id.
CHILDREN = set()
CHILDREN_LOCK = threading.Lock()


def run(cmd, env=None, timeout=None):
    """subprocess.run with the child in its own process group, ended with it on timeout or interrupt."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    with CHILDREN_LOCK:
        CHILDREN.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except BaseException:
        end_group(proc)
        raise
    finally:
        with CHILDREN_LOCK:
            CHILDREN.discard(proc)


def end_group(proc):
    """SIGTERM first: ninja then ends the compilers it started (each in a process group of its
    own); SIGKILL to the group after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def end_children():
    with CHILDREN_LOCK:
        procs = list(CHILDREN)
    for proc in procs:
        end_group(proc)


def configure(src, build, test_files):
    cmd = ["cmake", "-S", src, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
           "-DACTCKPT_LIBTORCH=system", "-DACTCKPT_BUILD_BENCHMARKS=OFF", "-DACTCKPT_BUILD_EXAMPLES=OFF",
           "-DACTCKPT_INSTALL=OFF", "-DACTCKPT_TEST_FILES=" + ";".join(sorted(test_files))]
    r = run(cmd)
    if r.returncode != 0:
        fail("configure failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])


def build(build_dir, jobs):
    r = run(["ninja", "-C", build_dir, f"-j{jobs}", "actckpt_tests"])
    return r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def run_selection(build_dir, test_file, cases, form, timeout):
    """Runs the cases of one test file in one form; returns (status, cases_run, output tail)."""
    exe = os.path.join(build_dir, "tests", "actckpt_tests")
    cmd = [exe, f"--source-file=*/{test_file}", "--test-case=" + ",".join(cases),
           "--test-case-exclude=*[cuda]*", "--no-intro=true"]
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    env.pop("ACTCKPT_CHECKPOINT_FORM", None)
    if form == "reentrant":
        env["ACTCKPT_CHECKPOINT_FORM"] = "reentrant"
    try:
        r = run(cmd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", -1, ""
    out = r.stdout + r.stderr
    found = re.search(r"\[doctest\] test cases: +(\d+) \|", out)
    ran = int(found.group(1)) if found else -1
    if r.returncode == 0:
        return "passed", ran, out[-2000:]
    return ("failed" if r.returncode > 0 else f"signal {-r.returncode}"), ran, out[-2000:]


def selections(m):
    for test_file, cases in m["tests"]:
        for form in m["forms"]:
            yield test_file, cases, form


def short(test_file, form):
    name = os.path.basename(test_file).removesuffix(".cpp").removeprefix("test_")
    return name + ("" if form == "default" else ".reentrant")


def main():
    args = parse_args()
    mutants = selected(args)
    if args.list:
        for m in mutants:
            print(f"{m['name']:34} {m['file'].removeprefix('include/actckpt/')}: {m['why']}")
        return 0
    check_patterns(mutants)
    # JOBS compiles at once: the baseline builds with -jJOBS, and JOBS workers take mutants in
    # turn, each with its own copy of the tree and build tree (a mutant compiles one or two files,
    # so one build tree could not use a second core).
    jobs = max(1, int(os.environ.get("JOBS", "2")))
    work = os.path.abspath(os.environ.get("WORK_DIR", os.path.join(REPO, "build", "mutation")))
    trees = [(os.path.join(work, "src" if k == 0 else f"src-{k}"), os.path.join(work, "build" if k == 0 else f"build-{k}"))
             for k in range(min(jobs, len(mutants)))]
    start = time.monotonic()

    # Files of the copies that a mutant changed, with their pristine text; put back on any exit
    # (Ctrl-C included). Only the copies are ever changed: the working tree is read, never written.
    mutated = {}
    lock = threading.Lock()
    stop = threading.Event()

    def restore(path=None):
        with lock:
            for p in [path] if path else list(mutated):
                if p in mutated:
                    with open(p, "w") as f:  # a fresh mtime: ninja rebuilds what the mutant compiled
                        f.write(mutated.pop(p))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, on_signal)
    rows = {}
    problems = []
    try:
        for src, _ in trees:
            os.makedirs(src, exist_ok=True)
            sync_tree(REPO, src)
        if not args.no_baseline:
            src, build_dir = trees[0]
            files = sorted({f for m in mutants for f, _ in m["tests"]})
            log(f"baseline: building {len(files)} test files unmutated (LibTorch 1.13, -j{jobs})")
            configure(src, build_dir, files)
            ok, out = build(build_dir, jobs)
            if not ok:
                fail("the unmutated tree does not build:\n" + out)
            seen = set()
            for m in mutants:
                for test_file, cases, form in selections(m):
                    key = (test_file, tuple(cases), form)
                    if key in seen:
                        continue
                    seen.add(key)
                    status, ran, out = run_selection(build_dir, test_file, cases, form, args.timeout)
                    if status != "passed" or ran < 1:
                        fail(f"baseline: {short(test_file, form)} {cases} {status} with {ran} test cases run "
                             f"(mutant '{m['name']}' needs it to pass unmutated and run at least one case):\n{out}")
            log(f"baseline: every selection passes unmutated ({int(time.monotonic() - start)} s)")

        queue = list(enumerate(mutants))
        queue.reverse()

        def worker(src, build_dir):
            try:
                work_on(src, build_dir)
            except BaseException as e:  # fail() in a worker, or anything unexpected: stop them all, say why
                problems.append(f"{type(e).__name__}: {e}")
                stop.set()

        def work_on(src, build_dir):
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    i, m = queue.pop()
                t0 = time.monotonic()
                path = os.path.join(src, m["file"])
                pristine = open(os.path.join(REPO, m["file"])).read()
                with lock:
                    if stop.is_set():
                        return
                    mutated[path] = pristine
                    with open(path, "w") as f:
                        f.write(pristine.replace(m["find"], m["replace"], 1))
                    if open(path).read() == pristine:
                        problems.append(f"mutant '{m['name']}' did not change {m['file']}")
                        stop.set()
                        return
                configure(src, build_dir, {f for f, _ in m["tests"]})
                ok, out = build(build_dir, 1)
                restore(path)
                if stop.is_set():  # interrupted: the build was ended, not failed
                    return
                tests_run, result = [], "SURVIVED"
                if not ok:
                    result = "BUILD FAILED"
                    print(out, file=sys.stderr, flush=True)
                else:
                    for test_file, cases, form in selections(m):
                        status, ran, _ = run_selection(build_dir, test_file, cases, form, args.timeout)
                        tests_run.append(f"{short(test_file, form)}: {status}")
                        if status != "passed":
                            result = "caught"
                if stop.is_set():
                    return
                seconds = time.monotonic() - t0
                rows[i] = (m["name"], m["file"].removeprefix("include/actckpt/"), "; ".join(tests_run) or "-", result,
                           seconds)
                log(f"{len(rows)}/{len(mutants)} {m['name']}: {result} ({seconds:.0f} s)")

        threads = [threading.Thread(target=worker, args=tree, daemon=True) for tree in trees]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        end_children()
        restore()
        print("\n[mutation-check] interrupted; the copies under " + work + " are restored", file=sys.stderr)
        return 130
    finally:
        stop.set()
        restore()
    if problems:
        fail("; ".join(problems))

    total = time.monotonic() - start
    table = [rows[i] for i in sorted(rows)]
    header = ("mutant", "file", "tests run (result)", "result")
    widths = [max(len(str(r[k])) for r in table + [header]) for k in range(4)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)) + " | time")
    print("-+-".join("-" * w for w in widths) + "-+-----")
    for r in table:
        print(" | ".join(str(v).ljust(w) for v, w in zip(r[:4], widths)) + f" | {r[4]:4.0f} s")
    caught = sum(1 for r in table if r[3] == "caught")
    print(f"\n{caught} of {len(mutants)} mutants caught; total {total:.0f} s "
          f"(LibTorch 1.13, {len(trees)} workers{'' if args.no_baseline else ', baseline included'})")
    return 0 if caught == len(mutants) else 1


sys.exit(main())
PY
