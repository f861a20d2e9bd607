#!/usr/bin/env python3
"""Every relative link in the project's Markdown points to a file that exists (and, for a
`#fragment` into a Markdown file, to one of its headings). Checks README.md, docs/*.md and
bench/*.md, or the files given. Exits 1 and lists the broken links if there is any.
Run by scripts/test.sh (both modes); standard library only."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, …


def prose(path, blank_code_spans=True):
    """The file's text with fenced code blocks (and code spans) blanked out, lines kept."""
    out, fence = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        marker = re.match(r"^\s*(```+|~~~+)", line)
        if marker and fence is None:
            fence = marker.group(1)[0] * 3
        elif marker and line.strip().startswith(fence):
            fence = None
        else:
            out.append("" if fence else CODE_SPAN.sub("code", line) if blank_code_spans else line)
            continue
        out.append("")
    return "\n".join(out)


def heading_slugs(path):
    """The fragments GitHub gives the headings of a Markdown file: lower case, punctuation
    (backticks included) dropped, spaces to hyphens, -1, -2… for repeats."""
    seen, out = {}, set()
    for line in prose(path, blank_code_spans=False).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def check(path):
    broken = []
    text = prose(path)
    for link in LINK.finditer(text):  # a link's text may run over several lines
        target, no = link.group(1), text.count("\n", 0, link.start()) + 1
        if EXTERNAL.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{no}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in heading_slugs(dest):
            broken.append(f"{where} (no heading '#{fragment}' in {dest.name})")
    return broken


def main():
    default = [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md")), *sorted(ROOT.glob("bench/*.md"))]
    files = [Path(a).resolve() for a in sys.argv[1:]] or default
    broken = [b for f in files for b in check(f)]
    for b in broken:
        print(f"broken link: {b}")
    print(f"doc links: {len(files)} files checked, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
