"""Profiles: a named setup kept as only what it changes in params.yaml, and the command that applies it.

    python -m alignkit.profile profiles/book.yaml                 # edits params.yaml in place
    python -m alignkit.profile profiles/book.yaml --dry-run       # prints what it would change
    python -m alignkit.profile profiles/book.yaml --params other.yaml

A profile (profiles/*.yaml) is a YAML mapping shaped like params.yaml, holding only the keys it sets, and an
optional `remove:` list of dotted keys it takes out (a data set or reward model the setup does not have; one
already absent is no change).
Mappings merge key by key; any other value (a number, a string, a list) replaces the one in params.yaml. Every
other key, comment and blank line of params.yaml stays as it was, so the user's own edits survive. The result
is validated with the params schema before anything is written (a profile that would leave params.yaml
invalid is a one-line error, and params.yaml is left as it was), then written atomically, and each change is
printed. Applying a profile twice changes nothing the second time.
"""

import argparse
import io
import os
import sys
from pathlib import Path

from ruamel.yaml import YAML

from alignkit.errors import ParamsError, show
from alignkit.io import atomic_file
from alignkit.params import load_params, read_yaml

REMOVE = "remove"
_MISSING = object()


def _yaml():
    """ruamel.yaml's round-trip mode, set to write params.yaml back as it is written: comments, flow mappings,
    2-space indents, `null` spelt out, no line wrapping."""
    rt = YAML()
    rt.width = 4096
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def _plain(value):
    """A round-trip value as plain Python (mappings, lists, scalars), to compare and to show."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _merge(target, overlay, where, changes):
    """Set every key of `overlay` in `target` (both mappings), recursing into mappings on both sides."""
    for key, value in overlay.items():
        old = target.get(key, _MISSING)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value, f"{where}{key}.", changes)
        elif old is _MISSING or _plain(old) != _plain(value) or type(_plain(old)) is not type(_plain(value)):
            target[key] = value
            changes.append(("+" if old is _MISSING else "~", f"{where}{key}", None if old is _MISSING else old, value))


def _remove(target, dotted, changes):
    """Take the key `dotted` out of `target`; one already absent (a profile applied before) is no change."""
    *parents, last = dotted.split(".")
    node = target
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node:
        changes.append(("-", dotted, node.pop(last), None))


def apply_profile(profile, params="params.yaml", write=True):
    """Apply profile file `profile` to params file `params` (see the module text). Returns the changes, each
    (kind, dotted key, old, new) with kind '~' (changed), '+' (added) or '-' (removed)."""
    profile, params = Path(profile), Path(params)
    read_yaml(profile)  # one-line errors for a file that is not YAML, or that YAML 1.1 tools would read otherwise
    rt = _yaml()
    overlay = rt.load(profile.read_text(encoding="utf-8"))
    if not isinstance(overlay, dict):
        raise ParamsError(f"{profile}: expected a mapping of params sections, got {type(overlay).__name__}")
    removals = overlay.pop(REMOVE, [])
    if not isinstance(removals, list) or not all(isinstance(k, str) for k in removals):
        raise ParamsError(f"{profile}: {REMOVE}: expected a list of dotted keys, got {show(_plain(removals))}")
    read_yaml(params)
    document = rt.load(params.read_text(encoding="utf-8"))
    changes = []
    for dotted in removals:
        _remove(document, dotted, changes)
    _merge(document, overlay, "", changes)
    out = io.StringIO()
    rt.dump(document, out)
    try:
        load_params(params, out.getvalue())  # the result, validated before it is written
    except ParamsError as err:
        raise ParamsError(f"{profile}: applied to {err}") from None
    if write and changes:
        with atomic_file(params) as tmp:
            tmp.write_text(out.getvalue(), encoding="utf-8")
    return changes


def describe(change):
    kind, key, old, new = change
    if kind == "-":
        return f"  - {key} (was {show(_plain(old), 60)})"
    if kind == "+":
        return f"  + {key}: {show(_plain(new), 60)}"
    return f"  ~ {key}: {show(_plain(old), 30)} -> {show(_plain(new), 30)}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m alignkit.profile",
        description="Apply a profile (profiles/*.yaml) to params.yaml, keeping every "
        "key it does not name, and print what changed.",
    )
    parser.add_argument("profile", help="the profile file, e.g. profiles/book.yaml")
    parser.add_argument("--params", default="params.yaml", help="the params file to change (default: params.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    try:
        changes = apply_profile(args.profile, args.params, write=not args.dry_run)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would change" if args.dry_run else "changed"
    lines = [
        f"{args.profile} -> {args.params}: {verb} {len(changes)} key(s)"
        if changes
        else f"{args.params} already has every value {args.profile} sets: nothing to change"
    ]
    try:
        print("\n".join(lines + [describe(change) for change in changes]), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
