"""Write docs/params.md, the params reference: every key of params.yaml with its default, what it accepts (from
the schema in alignkit/params.py) and what it does (its comment in params.yaml), after the page's introduction
(scripts/params_intro.md).

    python scripts/params_reference.py           # rewrite docs/params.md
    python scripts/params_reference.py --check   # exit 1 if docs/params.md is not what this would write
"""

import argparse
import re
import sys
from pathlib import Path

from alignkit.params import describe_key

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "params.md"
KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(.*)$")


def split_comment(text):
    """(value, comment) of what follows `key:` on a line; a '#' inside quotes is part of the value."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def keys(text):
    """Every key of a params.yaml text, in order: (dotted path, default as written or None for a section,
    comment): the comment at the end of the key's line, else the comment lines right above it."""
    stack, above = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            above = []
            continue
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(line)
        if not match:
            raise SystemExit(f"error: params.yaml: cannot read this line as a key: {line[:80]!r}")
        indent, key, rest = len(match[1]), match[2], match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = split_comment(rest)
        path = [name for _, name in stack] + [key]
        stack.append((indent, key))
        yield path, value or None, comment or " ".join(above)
        above = []


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def render(params_text, intro):
    out = [
        intro.rstrip(),
        "",
        "## Every key",
        "",
        "Written by `python scripts/params_reference.py` from `params.yaml` (defaults, comments) and the",
        "schema in `alignkit/params.py` (what each key accepts); a test fails when this page is stale.",
        "",
    ]
    for path, value, comment in keys(params_text):
        if len(path) == 1:
            out += [
                "",
                f"### `{path[0]}`",
                "",
                cell(comment),
                "",
                "| key | default | accepts | meaning |",
                "|---|---|---|---|",
            ]
            if value is None:
                continue
        accepts = describe_key(path)
        default = f"`{value}`" if value is not None else "(a mapping)"
        out.append(f"| `{'.'.join(path)}` | {cell(default)} | {cell(accepts)} | {cell(comment)} |")
    return "\n".join(out).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/params.md is stale; write nothing")
    args = parser.parse_args(argv)
    page = render((REPO / "params.yaml").read_text(), (Path(__file__).parent / "params_intro.md").read_text())
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != page:
            print(f"{PAGE.relative_to(REPO)} is stale: run python scripts/params_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
