#!/usr/bin/env python3
"""Checks the shape of adsync's Rust code (issue 14's targets). Python 3 standard library only.

Scans shared/src/**/*.rs and functions/*/src/**/*.rs and reports:
  (a) files over 600 lines;
  (b) functions over 80 lines, counted from the `fn` line to its closing brace, test code aside
      (items under #[cfg(test)] / #[test], files named tests.rs or under a tests/ directory);
  (c) references that run against the layers, foundation (domain, clock, config, budget, …) <-
      adapters (amazon, store, aws) <- api and wiring (http, runtime, settings, …) <- use cases
      (linking, ingest, export, console, parked_dlq) <- functions (see LAYERS below):
      every `use crate::X` / `crate::X::` (and `super::` reaching another top-level module) from
      a module of a lower layer to one of a higher layer, with file, line and the reference;
      and cycles between top-level modules of shared/src (any layers).
Comments, doc comments and string literals are ignored; test code is ignored for (b) and (c).

Exit status: 1 when anything is found (0 otherwise), unless --report is given (always 0).
Usage: infra/scripts/structure.py [--report] [--exclude-tests] [--root DIR]
  --exclude-tests  leave test files (tests.rs, tests/ directories) out of (a) too.
"""

import argparse
import os
import re
import sys

MAX_FILE_LINES = 600
MAX_FN_LINES = 80

# Top-level modules of shared/src and their layer (higher may use lower, never the reverse).
LAYERS = {
    # foundation: pure domain and leaf utilities that import nothing above them
    "domain": 0,
    "random": 0,  # OS randomness
    "clock": 0,  # the one wall clock
    "config": 0,  # environment readers and ConfigError
    "telemetry": 0,  # logs and metrics
    "budget": 0,  # the request's time budget, read by the Amazon client
    # adapters: Amazon, the stores, the AWS clients they are built from
    "amazon": 1,
    "store": 1,
    "aws": 1,
    "sdk_http": 1,  # the AWS SDK clients' HTTPS client (root certificates read on first use)
    # api and wiring: the runtime, HTTP, settings, adapters wired together
    "http": 2,
    "api": 2,
    "runtime": 2,
    "settings": 2,
    "amazon_vault": 2,
    "local_serving": 2,
    # use cases
    "linking": 3,
    "ingest": 3,
    "export": 3,
    "console": 3,
    "parked_dlq": 3,  # the dead-letter mover the ingest and export use cases share
}
DEFAULT_LAYER = 2
LAYER_NAMES = ["foundation", "adapters", "api and wiring", "use cases", "functions"]


def strip_code(text):
    """The text with comments, string and char literals blanked (newlines and length kept)."""
    out = list(text)
    i, n = 0, len(text)

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (c in "rb") and re.match(r"(br|r)#*\"", text[i : i + 80]) and not _ident_before(text, i):
            m = re.match(r"(br|r)(#*)\"", text[i:])
            hashes = m.group(2)
            end = text.find('"' + hashes, i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(hashes)
            blank(i, end)
            i = end
        elif c == '"' or (c == "b" and text.startswith('b"', i) and not _ident_before(text, i)):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}', '\''), else a lifetime ('a).
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 3)
                j = n if j < 0 else j
                blank(i, j + 1)
                i = j + 1
            elif i + 2 < n and text[i + 2] == "'":
                blank(i, i + 3)
                i += 3
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def _ident_before(text, i):
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")


def matching_brace(code, open_at):
    """The index of the `}` closing the `{` at `open_at` (or len(code))."""
    depth = 0
    for k in range(open_at, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(code)


def item_body(code, start):
    """From `start`, the first `{` or `;` outside parentheses/brackets: the item's braces
    (open, close) or None for an item without a body."""
    depth = 0
    for k in range(start, len(code)):
        ch = code[k]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch == ";":
            return None
        elif depth == 0 and ch == "{":
            return k, matching_brace(code, k)
    return None


TEST_ATTR = re.compile(r"#\[\s*(cfg\s*\(\s*test\s*\)|test|tokio::test[^\]]*)\s*\]")


def test_ranges(code):
    """Character ranges of items marked #[cfg(test)], #[test] or #[tokio::test]."""
    ranges = []
    for m in TEST_ATTR.finditer(code):
        body = item_body(code, m.end())
        if body:
            ranges.append((m.start(), body[1]))
    return ranges


def in_ranges(pos, ranges):
    return any(a <= pos <= b for a, b in ranges)


def line_of(code, pos, starts):
    """1-based line of character `pos` (`starts`: offsets of line starts)."""
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo + 1


def is_test_file(rel):
    parts = rel.split("/")
    return parts[-1] == "tests.rs" or "tests" in parts[:-1]


def module_path(rel):
    """`shared/src/export/destinations.rs` -> ['export', 'destinations']; mod.rs/lib.rs -> dir."""
    parts = rel.split("/")[2:]  # after shared/src
    last = parts[-1][:-3]
    parts = parts[:-1]
    if last not in ("mod", "lib"):
        parts.append(last)
    return parts


USE_STMT = re.compile(r"\buse\s+([^;]+);")
CRATE_PATH = re.compile(r"(?<![\w:])crate\s*::\s*([A-Za-z_]\w*)")
SUPER_PATH = re.compile(r"(?<![\w:])((?:super\s*::\s*)+)([A-Za-z_]\w*)")
FN_ITEM = re.compile(r"\bfn\s+([A-Za-z_]\w*)")


def top_level_refs(code, text, rel, starts, tests):
    """(line, target top-level module, source text) of each reference to a top-level module
    (`code`: the text with comments and strings blanked, same offsets)."""
    mod = module_path(rel)
    out = []
    # `use crate::{a, b::c}`: each top-level item of the group.
    for m in USE_STMT.finditer(code):
        if in_ranges(m.start(), tests):
            continue
        body = re.sub(r"\s+", "", m.group(1))
        line = line_of(code, m.start(), starts)
        if body.startswith("crate::{"):
            inner = body[len("crate::{") : body.rfind("}")]
            for item in split_top(inner):
                name = re.match(r"[A-Za-z_]\w*", item)
                if name and name.group(0) not in ("self", "super"):
                    out.append((line, name.group(0), "use " + body))
    for m in CRATE_PATH.finditer(code):
        if in_ranges(m.start(), tests):
            continue
        out.append((line_of(code, m.start(), starts), m.group(1), snippet(text, m.start())))
    for m in SUPER_PATH.finditer(code):
        if in_ranges(m.start(), tests):
            continue
        ups = m.group(1).count("super")
        base = mod[: max(len(mod) - ups, 0)] if len(mod) >= ups else None
        if base is None:
            continue
        target = base[0] if base else m.group(2)
        out.append((line_of(code, m.start(), starts), target, snippet(text, m.start())))
    return out


def split_top(s):
    items, depth, cur = [], 0, ""
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        items.append(cur)
    return items


def snippet(text, pos):
    end = text.find("\n", pos)
    s = text[pos : end if end >= 0 else len(text)].strip()
    s = re.sub(r"\s+", " ", s)
    return s[:90]


def sources(root):
    roots = [os.path.join(root, "shared", "src")]
    fdir = os.path.join(root, "functions")
    if os.path.isdir(fdir):
        roots += [os.path.join(fdir, f, "src") for f in sorted(os.listdir(fdir))]
    for r in roots:
        for dirpath, dirnames, filenames in os.walk(r):
            dirnames.sort()
            for f in sorted(filenames):
                if f.endswith(".rs"):
                    path = os.path.join(dirpath, f)
                    yield path, os.path.relpath(path, root).replace(os.sep, "/")


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="always exit 0")
    ap.add_argument("--exclude-tests", action="store_true", help="leave test files out of (a)")
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    args = ap.parse_args()
    root = os.path.abspath(args.root)

    big_files, long_fns, wrong_way, unknown = [], [], [], set()
    edges, edge_example = {}, {}
    n_files = n_fns = 0
    for path, rel in sources(root):
        n_files += 1
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        test_file = is_test_file(rel)
        if lines > MAX_FILE_LINES and not (test_file and args.exclude_tests):
            big_files.append((lines, rel, test_file))
        code = strip_code(text)
        starts = [0] + [i + 1 for i, ch in enumerate(code) if ch == "\n"]
        tests = test_ranges(code)
        if not test_file:
            for m in FN_ITEM.finditer(code):
                if in_ranges(m.start(), tests):
                    continue
                body = item_body(code, m.end())
                if not body:
                    continue
                n_fns += 1
                first = line_of(code, m.start(), starts)
                last = line_of(code, body[1], starts)
                if last - first + 1 > MAX_FN_LINES:
                    long_fns.append((last - first + 1, rel, first, m.group(1)))
        if not rel.startswith("shared/src/") or test_file:
            continue
        mod = module_path(rel)
        if not mod:
            continue  # lib.rs
        src = mod[0]
        seen = set()
        for line, target, what in top_level_refs(code, text, rel, starts, tests):
            if target == src or target in ("self", "super", "crate") or (line, target) in seen:
                continue
            seen.add((line, target))
            for name in (src, target):
                if name not in LAYERS:
                    unknown.add(name)
            ls, lt = LAYERS.get(src, DEFAULT_LAYER), LAYERS.get(target, DEFAULT_LAYER)
            edges.setdefault(src, set()).add(target)
            edge_example.setdefault((src, target), f"{rel}:{line}")
            if lt > ls:
                wrong_way.append((rel, line, src, ls, target, lt, what))

    found_cycles = cycles(edges)
    print(f"structure: {n_files} files, {n_fns} non-test functions under {root}")
    print(f"\n(a) files over {MAX_FILE_LINES} lines:")
    for lines, rel, t in sorted(big_files, reverse=True):
        print(f"  {rel}: {lines} lines{' (tests)' if t else ''}")
    print(f"\n(b) non-test functions over {MAX_FN_LINES} lines:")
    for n, rel, line, name in sorted(long_fns, reverse=True):
        print(f"  {rel}:{line} fn {name}: {n} lines")
    print("\n(c) references against the layers (" + " <- ".join(LAYER_NAMES) + "):")
    for rel, line, src, ls, target, lt, what in wrong_way:
        print(f"  {rel}:{line} {src} ({LAYER_NAMES[ls]}) -> {target} ({LAYER_NAMES[lt]}): {what}")
    print("\n(c) cycles between top-level modules:")
    for comp in found_cycles:
        links = [
            f"{a}->{b} ({edge_example[(a, b)]})"
            for a in comp
            for b in comp
            if (a, b) in edge_example
        ]
        print(f"  {{{', '.join(comp)}}}: " + "; ".join(links))
    if unknown:
        print(f"\nnote: modules without a layer in LAYERS (taken as {LAYER_NAMES[DEFAULT_LAYER]}): "
              + ", ".join(sorted(unknown)))
    print(
        f"\nsummary: {len(big_files)} files over {MAX_FILE_LINES} lines, {len(long_fns)} functions over "
        f"{MAX_FN_LINES} lines, {len(wrong_way)} wrong-way references, {len(found_cycles)} module cycles"
    )
    bad = big_files or long_fns or wrong_way or found_cycles
    return 1 if bad and not args.report else 0


if __name__ == "__main__":
    sys.exit(main())
