#!/usr/bin/env python3
"""Size limits that keep src/ legible (issue 23): no file over 500 lines, no function over 80,
no HTTP handler (a function under a route attribute in src/api/) over 40. Test code is exempt.

    scripts/check-sizes.py     # lists what is over, exit 1 if anything is
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_MAX, FN_MAX, HANDLER_MAX = 500, 80, 40
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)")
ROUTE = re.compile(r"^\s*#\[(get|post|put|delete|patch|utoipa::path)\(")


def code(line):
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)  # char literals such as '{'
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    return re.sub(r"//.*", "", line)


def functions(lines):
    """(name, first line, length, is a handler) of each fn, by brace counting."""
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        handler = False
        for k in range(i - 1, -1, -1):  # up through its attributes and doc comment
            if lines[k].strip() == "" or lines[k].startswith("}"):
                break
            handler = handler or bool(ROUTE.match(lines[k]))
        depth, opened = 0, False
        for j in range(i, len(lines)):
            c = code(lines[j])
            if not opened and ";" in c and "{" not in c:
                break
            depth += c.count("{") - c.count("}")
            opened = opened or "{" in c
            if opened and depth <= 0:
                yield m.group(5), i + 1, j - i + 1, handler
                break


def is_test(path):
    parts = path.split(os.sep)
    return "tests" in parts or parts[-1] in ("tests.rs", "fuzz.rs")


def main():
    over = []
    for d, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in sorted(files):
            path = os.path.join(d, f)
            if not f.endswith(".rs") or is_test(os.path.relpath(path, ROOT)):
                continue
            rel = os.path.relpath(path, ROOT)
            lines = open(path, encoding="utf-8").read().split("\n")
            cut = next((i for i, l in enumerate(lines) if re.match(r"#\[cfg\(test\)\]", l.strip())
                        and i + 1 < len(lines) and "{" in lines[i + 1]), len(lines))
            lines = lines[:cut]
            if len(lines) > FILE_MAX:
                over.append(f"{rel}: {len(lines)} lines (file limit {FILE_MAX})")
            for name, at, n, handler in functions(lines):
                limit = HANDLER_MAX if handler and rel.startswith("src/api") else FN_MAX
                if n > limit:
                    over.append(f"{rel}:{at}: fn {name} is {n} lines (limit {limit})")
    for o in over:
        print(o)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
