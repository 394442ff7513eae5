#!/usr/bin/env python3
"""Checks the documentation's relative links, so a page moved or a heading renamed cannot leave a
dead link behind (the README was split into docs/ pages that link into each other).

    python3 tests/docs/check_links.py SOURCE_DIR

For README.md and every docs/*.md: each markdown link or image whose target is not a URL
(http://, https://, mailto:) must name a file or folder that exists in the repository, relative
to the page; a '#anchor' must name a heading of the target page (GitHub's slugs: lowercase,
spaces to '-', punctuation other than '-' and '_' dropped, '-1', '-2', ... for repeats) or an
explicit <a id="..."> / <a name="..."> in it. A link whose text wraps onto the next line counts
too. Links inside code (fenced blocks and `spans`) are not links and are skipped. README.md must
also stay at most MAX_README_LINES lines: it is the front door, the detail lives in docs/.

Prints each broken link as `file:line: link -> why` and exits 1 if there is any.
Standard library only.
"""

import os
import re
import sys

MAX_README_LINES = 300

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows)
# or at the closing parenthesis. One level of nested brackets in the text is allowed, for an
# image inside a link: [![alt](img.png)](page.md).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
# The same, for a link whose text the paragraph wraps onto the next line(s) (prose here is wrapped
# at 100 columns, so "[the\nplanner](docs/planner.md)" is common): searched in each paragraph
# joined, and only matches that contain a line break, so no link is counted twice.
WRAPPED_LINK = re.compile(r"!?\[[^\[\]]*\n[^\[\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target  (reference-style definitions)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ... and //host


def slug(heading):
    """GitHub's anchor for a heading: inline markup removed, lowercase, every character that is
    not a letter, digit, space, '-' or '_' dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def strip_code_spans(line):
    return re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), line)


def prose_lines(path):
    """(line number, text) of each line outside fenced code blocks, code spans blanked."""
    in_fence = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fence = FENCE.match(line)
            if fence:
                if in_fence is None:
                    in_fence = fence.group(1)
                elif fence.group(1) == in_fence:
                    in_fence = None
                continue
            if in_fence is None:
                yield number, strip_code_spans(line.rstrip("\n"))


def paragraphs(path):
    """(first line number, text) of each run of consecutive non-blank prose lines, joined by
    line breaks: a fence or a blank line ends a paragraph."""
    first, last, lines = None, None, []
    for number, line in prose_lines(path):
        if not line.strip() or (last is not None and number != last + 1):
            if lines:
                yield first, "\n".join(lines)
            first, lines = None, []
        if line.strip():
            if first is None:
                first = number
            lines.append(line)
        last = number
    if lines:
        yield first, "\n".join(lines)


_anchor_cache = {}


def anchors(path):
    if path not in _anchor_cache:
        found, seen = set(), {}
        for _, line in prose_lines(path):
            heading = HEADING.match(line)
            if heading:
                base = slug(heading.group(2))
                count = seen.get(base, 0)
                seen[base] = count + 1
                found.add(base if count == 0 else f"{base}-{count}")
            found.update(HTML_ANCHOR.findall(line))
        _anchor_cache[path] = found
    return _anchor_cache[path]


def check_link(root, page, target):
    """Why `target`, linked from `page`, is broken; None if it resolves."""
    if not target or EXTERNAL.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    if path_part:
        if path_part.startswith("/"):
            resolved = os.path.normpath(os.path.join(root, path_part.lstrip("/")))
        else:
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path_part))
        if not (resolved + os.sep).startswith(os.path.normpath(root) + os.sep):
            return "points outside the repository"
        if not os.path.exists(resolved):
            return f"no such file: {os.path.relpath(resolved, root)}"
    else:
        resolved = page
    if anchor:
        if os.path.isdir(resolved) or not resolved.endswith(".md"):
            return f"an anchor into {os.path.relpath(resolved, root)}, which is not a markdown page"
        if anchor not in anchors(resolved):
            return f"no heading or <a id> '{anchor}' in {os.path.relpath(resolved, root)}"
    return None


def pages(root):
    result = [os.path.join(root, "README.md")]
    docs = os.path.join(root, "docs")
    if os.path.isdir(docs):
        result += sorted(os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))
    return [p for p in result if os.path.isfile(p)]


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = os.path.abspath(argv[1])
    problems, links = [], 0
    readme = os.path.join(root, "README.md")
    if not os.path.isfile(readme):
        problems.append("README.md:0: (none) -> README.md is missing")
    else:
        with open(readme, encoding="utf-8") as f:
            count = sum(1 for _ in f)
        if count > MAX_README_LINES:
            problems.append(f"README.md:{count}: (length) -> {count} lines, more than {MAX_README_LINES}: "
                            "move detail into a page under docs/ and link to it")
    for page in pages(root):
        name = os.path.relpath(page, root)
        found = []  # (line number, target)
        for number, line in prose_lines(page):
            found += [(number, target) for target in LINK.findall(line)]
            reference = REFERENCE.match(line)
            if reference:
                found.append((number, reference.group(1)))
        for first, text in paragraphs(page):
            for match in WRAPPED_LINK.finditer(text):
                found.append((first + text.count("\n", 0, match.start()), match.group(1)))
        for number, target in sorted(found):
            links += 1
            why = check_link(root, page, target)
            if why:
                problems.append(f"{name}:{number}: {target} -> {why}")
    for problem in problems:
        print(problem)
    print(f"docs links: {len(pages(root))} pages, {links} relative or external links checked, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
