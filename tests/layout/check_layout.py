#!/usr/bin/env python3
"""The house rules of include/actckpt/, checked (ctest label `layout`).

    check_layout.py <source dir>              check the tree; exit 1 and name file:line per violation
    check_layout.py <source dir> --self-test  check that each rule catches a planted violation

The order of the rooms is read from docs/design.md (the table after the `<!-- rooms: ... -->`
marker: floor | room | purpose), so the written order and the checked one cannot drift apart.
Rules:
  - a header includes only headers of its own room or of rooms on lower floors;
  - never another room's `detail/` header; a `detail/` header carries the internal-header guard
    (`#if !defined(ACTCKPT_<ROOM>_INTERNALS)` ... `#error`);
  - every folder under include/actckpt/ is a room of the table (or a room's detail/), and every
    room of the table exists;
  - no folder holds more than 12 headers, no header more than 600 lines;
  - every include of an actckpt header names a file that exists;
  - each deprecated forwarding header in include/compat/actckpt/ forwards to an existing header,
    and a consumer test (tests/consumers/) includes it;
  - the search of the planner (planner/search.hpp and what it includes) reaches no torch::nn
    header, so depth tests can include it alone.
"""
import os
import re
import shutil
import sys
import tempfile

MAX_HEADERS_PER_FOLDER = 12
MAX_LINES_PER_HEADER = 600
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')
# Headers whose closure must stay free of LibTorch's C++ frontend (torch::nn, torch/torch.h).
NN_FREE = ["planner/search.hpp"]
NN_HEADERS = re.compile(r"^torch/(torch\.h|nn\b|nn\.h|all\.h|csrc/api/include/torch/nn)")


def read_rooms(design_md):
    """floor per room, from the table that follows the rooms marker in docs/design.md."""
    with open(design_md, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.startswith("<!-- rooms:"))
    except StopIteration:
        raise SystemExit(f"{design_md}: no '<!-- rooms: ... -->' marker before the rooms table")
    rooms = {}
    for number, line in enumerate(lines[start + 1:], start + 2):
        if not line.startswith("|"):
            if rooms:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue  # the header row and its rule
        room = cells[1].strip("`").rstrip("/")
        if not cells[2]:
            raise SystemExit(f"{design_md}:{number}: room {room} has no purpose")
        rooms[room] = int(cells[0])
    if not rooms:
        raise SystemExit(f"{design_md}: the rooms table after the marker is empty")
    return rooms


def room_of(relative):
    """'core/detail/nesting.hpp' -> 'core'; 'actckpt.hpp' -> 'actckpt.hpp'."""
    return relative.split("/", 1)[0]


def headers_under(root):
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        # The stand-in for a LibTorch header (a -idirafter folder) is not part of the rooms.
        dirs[:] = [d for d in dirs if d != "dist_autograd_standin"]
        for name in sorted(files):
            if name.endswith(".hpp"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, root).replace(os.sep, "/"), path


def check(source):
    include_root = os.path.join(source, "include")
    lib = os.path.join(include_root, "actckpt")
    compat = os.path.join(include_root, "compat", "actckpt")
    rooms = read_rooms(os.path.join(source, "docs", "design.md"))
    errors = []

    def where(path, line=None):
        rel = os.path.relpath(path, source)
        return f"{rel}:{line}" if line else rel

    # Folders: each a room (or a room's detail/), each room present, each at most 12 headers.
    for folder, dirs, files in os.walk(lib):
        dirs[:] = [d for d in dirs if d != "dist_autograd_standin"]
        rel = os.path.relpath(folder, lib).replace(os.sep, "/")
        headers = [f for f in files if f.endswith(".hpp")]
        if len(headers) > MAX_HEADERS_PER_FOLDER:
            errors.append(f"{where(folder)}: {len(headers)} headers, more than {MAX_HEADERS_PER_FOLDER}: "
                          "split the room by concern")
        if rel == ".":
            for h in headers:
                if h not in rooms:
                    errors.append(f"{where(os.path.join(folder, h))}: a header at the top of include/actckpt/ "
                                  "that is not in the rooms table of docs/design.md: put it in a room")
            continue
        parts = rel.split("/")
        if parts[0] not in rooms:
            errors.append(f"{where(folder)}: folder '{parts[0]}' is not a room in docs/design.md's rooms table")
        elif len(parts) > 1 and parts[1] != "detail":
            errors.append(f"{where(folder)}: rooms have no subfolders but detail/")
    for room in rooms:
        if not os.path.exists(os.path.join(lib, room)):
            errors.append(f"docs/design.md: room '{room}' has no folder (or file) under include/actckpt/")

    includes = {}  # relative header -> [actckpt headers it includes, relative]
    for rel, path in headers_under(lib):
        room = room_of(rel)
        with open(path, encoding="utf-8") as f:
            text = f.read().splitlines()
        if len(text) > MAX_LINES_PER_HEADER:
            errors.append(f"{where(path)}: {len(text)} lines, more than {MAX_LINES_PER_HEADER}: split it by job")
        if "/detail/" in "/" + rel:
            macro = f"ACTCKPT_{room.upper()}_INTERNALS"
            head = "\n".join(text[:12])
            if f"!defined({macro})" not in head or "#error" not in head:
                errors.append(f"{where(path)}:1: a detail/ header without the internal-header guard "
                              f"(#if !defined({macro}) ... #error at its top)")
        includes[rel] = []
        for number, line in enumerate(text, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = m.group(1)
            if not target.startswith("actckpt/"):
                includes[rel].append("<" + target)
                continue
            target = target[len("actckpt/"):]
            includes[rel].append(target)
            if not os.path.exists(os.path.join(lib, target)):
                errors.append(f"{where(path, number)}: includes actckpt/{target}, which does not exist"
                              + (" (an old flat path: include the header in its room)"
                                 if os.path.exists(os.path.join(compat, target)) else ""))
                continue
            other = room_of(target)
            if other == room:
                continue
            if "/detail/" in "/" + target:
                errors.append(f"{where(path, number)}: room {room} includes actckpt/{target}, a detail/ "
                              f"header of room {other}: include one of {other}'s public headers")
                continue
            if room not in rooms or other not in rooms:
                continue  # reported above
            if rooms[other] >= rooms[room]:
                way = "sideways" if rooms[other] == rooms[room] else "up"
                errors.append(f"{where(path, number)}: room {room} (floor {rooms[room]}) includes actckpt/{target} "
                              f"of room {other} (floor {rooms[other]}), {way}: a room uses only rooms on lower floors "
                              "(docs/design.md); move the code to the room that owns it")

    # The planner's search: no torch::nn anywhere in its closure.
    for start in NN_FREE:
        if start not in includes:
            errors.append(f"include/actckpt/{start}: missing (the layout rules name it as torch::nn-free)")
            continue
        seen, todo = set(), [(start, [start])]
        while todo:
            rel, chain = todo.pop()
            if rel in seen:
                continue
            seen.add(rel)
            for target in includes.get(rel, []):
                if target.startswith("<"):
                    if NN_HEADERS.match(target[1:]):
                        errors.append(f"include/actckpt/{start}: reaches <{target[1:]}> through "
                                      f"{' -> '.join(chain)}: the search must compile without torch::nn")
                elif target in includes:
                    todo.append((target, chain + [target]))

    # The deprecated flat paths: each forwards to a header that exists.
    if os.path.isdir(compat):
        for name in sorted(os.listdir(compat)):
            path = os.path.join(compat, name)
            with open(path, encoding="utf-8") as f:
                targets = [m.group(1) for m in map(INCLUDE.match, f) if m]
            if not targets:
                errors.append(f"{where(path)}: a forwarding header that includes nothing")
            for target in targets:
                if not os.path.exists(os.path.join(include_root, target)):
                    errors.append(f"{where(path)}: forwards to {target}, which does not exist")
        # The consumer tests compile every old path (tests/consumers/).
        consumers = ""
        for name in ("consumer_main.cpp", "distributed_consumer_main.cpp"):
            with open(os.path.join(source, "tests", "consumers", name), encoding="utf-8") as f:
                consumers += f.read()
        for name in sorted(os.listdir(compat)):
            if f"#include <actckpt/{name}>" not in consumers:
                errors.append(f"include/compat/actckpt/{name}: no consumer test includes <actckpt/{name}> "
                              "(tests/consumers/consumer_main.cpp)")
    return errors, rooms, includes


def copy_tree(source, tmp):
    """What check() reads: include/, docs/design.md, the consumer tests."""
    shutil.copytree(os.path.join(source, "include"), os.path.join(tmp, "include"))
    os.makedirs(os.path.join(tmp, "docs"))
    shutil.copy(os.path.join(source, "docs", "design.md"), os.path.join(tmp, "docs", "design.md"))
    shutil.copytree(os.path.join(source, "tests", "consumers"), os.path.join(tmp, "tests", "consumers"))


def self_test(source):
    """Plants one violation per rule in a copy of the tree; each must be reported."""
    cases = [
        ("base/errors.hpp", '#include "actckpt/wrap/checkpointed.hpp"\n', "includes actckpt/wrap/checkpointed.hpp of room wrap (floor 4), up"),
        ("policy/policy.hpp", '#include "actckpt/hooks/saved_tensor_hooks.hpp"\n', "room policy (floor 1) includes actckpt/hooks/saved_tensor_hooks.hpp of room hooks (floor 1), sideways"),
        ("wrap/plain.hpp", '#include "actckpt/core/detail/nesting.hpp"\n', "a detail/ header of room core"),
        ("base/config.hpp", '#include "actckpt/no_such.hpp"\n', "which does not exist"),
        ("planner/search.hpp", "#include <torch/nn/module.h>\n", "the search must compile without torch::nn"),
    ]
    failures = 0
    for header, line, expected in cases:
        with tempfile.TemporaryDirectory() as tmp:
            copy_tree(source, tmp)
            path = os.path.join(tmp, "include", "actckpt", header)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace("#pragma once\n", "#pragma once\n" + line, 1))
            errors, _, _ = check(tmp)
            hit = [e for e in errors if expected in e and header in e]
            status = "caught" if hit else "MISSED"
            print(f"self-test: {line.strip()} in {header}: {status}" + (f": {hit[0]}" if hit else ""))
            failures += not hit
    # Structural rules: an oversized header, a stray folder, a detail header without its guard.
    with tempfile.TemporaryDirectory() as tmp:
        copy_tree(source, tmp)
        lib = os.path.join(tmp, "include", "actckpt")
        with open(os.path.join(lib, "base", "long.hpp"), "w") as f:
            f.write("#pragma once\n" + "// line\n" * MAX_LINES_PER_HEADER)
        os.makedirs(os.path.join(lib, "misc"))
        with open(os.path.join(lib, "misc", "x.hpp"), "w") as f:
            f.write("#pragma once\n")
        os.makedirs(os.path.join(lib, "base", "detail"))
        with open(os.path.join(lib, "base", "detail", "y.hpp"), "w") as f:
            f.write("#pragma once\n")
        errors, _, _ = check(tmp)
        for expected in ["base/long.hpp: 601 lines", "folder 'misc' is not a room", "without the internal-header guard"]:
            hit = [e for e in errors if expected in e]
            print(f"self-test: {expected}: {'caught' if hit else 'MISSED'}")
            failures += not hit
    return failures


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    source = os.path.abspath(sys.argv[1])
    if "--self-test" in sys.argv[2:]:
        failures = self_test(source)
        print(f"layout self-test: {failures} rule(s) missed a planted violation" if failures
              else "layout self-test: every rule caught its planted violation")
        return 1 if failures else 0
    errors, rooms, includes = check(source)
    for e in errors:
        print(e)
    edges = sum(1 for targets in includes.values() for t in targets if not t.startswith("<"))
    print(f"layout: {len(includes)} headers in {len(rooms)} rooms, {edges} actckpt includes checked: "
          + (f"{len(errors)} violation(s)" if errors else "the rooms' order holds"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
