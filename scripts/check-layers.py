#!/usr/bin/env python3
"""The import map of src/: every `crate::<module>` a top-level module names, checked against
the layers in docs/architecture.md (a module may use only modules of lower layers), and the
console's JS checked for import circles.

    scripts/check-layers.py            # fails (exit 1) on an upward import or a circle
    scripts/check-layers.py --table    # prints the map as docs/architecture.md shows it
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

# Highest first. A module may use any module of a lower layer, none of its own or above.
LAYERS = [
    ("binaries", ["main", "bin", "cli", "local_pg"]),
    ("wiring", ["startup"]),
    ("http", ["api"]),
    ("services", ["services", "results"]),
    ("engine", ["engine", "maintenance", "webhooks"]),
    ("cluster", ["cluster", "notify"]),
    ("metrics", ["metrics"]),
    ("errors", ["error"]),
    ("store", ["store"]),
    ("formats", ["jsonl", "telemetry"]),
    ("settings", ["config"]),
    ("rules", ["domain", "tasks"]),
]
# Layers a module may not skip to: the handlers reach the engine and the store only through a
# service, so the rules stay in one place.
NO_SKIP = {"api": {"engine", "store"}}
RANK = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}
USE = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_]+)", re.S)


def top_modules():
    for entry in sorted(os.listdir(SRC)):
        name = entry[:-3] if entry.endswith(".rs") else entry
        if name != "lib":
            yield name, os.path.join(SRC, entry)


def sources(path):
    if os.path.isfile(path):
        yield path
        return
    for d, _, files in os.walk(path):
        for f in files:
            if f.endswith(".rs"):
                yield os.path.join(d, f)


def strip_tests(text):
    # `#[cfg(test)] mod tests;` and inline test modules may reach anywhere.
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: cut.start()] if cut else text


def uses(path):
    found = set()
    for f in sources(path):
        if os.sep + "tests" in f[len(SRC):] or f.endswith(os.sep + "tests.rs"):
            continue
        text = strip_tests(open(f, encoding="utf-8").read())
        text = re.sub(r"//[^\n]*", "", text)
        for m in USE.finditer(text):
            group = m.group(1)
            names = re.findall(r"(?:^|[{,]\s*)([a-z_]+)", group) if group.startswith("{") else [group]
            found.update(n for n in names if n not in ("self", "super"))
    return found


def js_circles():
    console = os.path.join(ROOT, "console")
    if not os.path.isdir(console):
        return []
    graph = {}
    for f in os.listdir(console):
        if f.endswith(".js"):
            text = open(os.path.join(console, f), encoding="utf-8").read()
            graph[f] = set(re.findall(r"from\s+['\"]\./([\w.-]+)['\"]", text))
    circles, state = [], {}

    def visit(n, path):
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                circles.append(path[path.index(m):] + [m] if m in path else [n, m])
            elif m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    return circles


def table(edges):
    width = max(map(len, edges))
    return [f"{m:<{width}} → {' '.join(edges[m]) or '(nothing)'}"
            for _, ms in LAYERS for m in ms if m in edges]


def doc_drift(edges):
    """docs/architecture.md shows the map in the text block under "How they depend"."""
    doc = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    m = re.search(r"## How they depend.*?```text\n(.*?)```", doc, re.S)
    if not m or m.group(1).rstrip("\n").split("\n") != table(edges):
        return ["docs/architecture.md: the map under 'How they depend' is not current "
                "(paste scripts/check-layers.py --table)"]
    return []


def main():
    edges = {name: sorted(uses(path) - {name}) for name, path in top_modules()}
    problems = []
    for name, targets in edges.items():
        if name not in RANK:
            problems.append(f"{name}: not in any layer (add it to LAYERS and docs/architecture.md)")
            continue
        for t in targets:
            if t in RANK and RANK[t] <= RANK[name]:
                problems.append(f"{name} -> {t}: runs up or sideways ({LAYERS[RANK[name]][0]} -> {LAYERS[RANK[t]][0]})")
            elif t in NO_SKIP.get(name, ()):
                problems.append(f"{name} -> {t}: skips the services layer")
    problems.extend(doc_drift(edges))
    for c in js_circles():
        problems.append("console import circle: " + " -> ".join(c))
    if "--table" in sys.argv:
        print("\n".join(table(edges)))
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
