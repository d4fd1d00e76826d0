"""The README is the front page and its commands are the ones CI and users run; the manual (docs/, a mkdocs
site) links only to what exists, and its params reference is what params.yaml and the schema say."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_opens_with_the_run_the_test_and_the_full_suite_commands():
    run, test, full = readme_commands()[:3]
    assert run.endswith("pip install -r requirements.txt && dvc repro")
    assert test.endswith("pip install -r requirements-dev.txt && python -m pytest")
    assert full == "python -m pytest --full"


def test_ci_runs_exactly_the_readme_test_commands_then_builds_the_docs_and_lints():
    test, full = readme_commands()[1:3]
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line[0] == "#"]
    assert test in ci_lines
    assert any(line.startswith(full) for line in ci_lines)  # the slow rest of the full suite, after the fast tier
    assert "set -euo pipefail" in ci_lines  # pytest's exit code 5 (no tests) fails CI
    assert "mkdocs build --strict" in ci_lines
    assert "ruff check ." in ci_lines and "ruff format --check ." in ci_lines


def test_the_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_every_params_key_has_a_comment():
    """Each key in params.yaml has a comment on the line above or at the end of its line."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*\w+:", line):
            assert "#" in line or lines[i - 1].strip().startswith("#"), f"line {i + 1} has no comment: {line!r}"


def slug(heading):
    """The anchor mkdocs (python-markdown's toc) and GitHub give a heading."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' line in a code block is no heading
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(page):
    """Every relative link of a Markdown page: (target path or '', anchor or '')."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            path, _, anchor = target.partition("#")
            yield path, anchor


def broken_links(page):
    """Each relative link of `page` whose file does not exist, or whose #anchor is no heading of that page."""
    broken = []
    for path, anchor in links(page):
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{path}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{path}#{anchor}: no such heading")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    """Each relative link names a file that exists, and its #anchor a heading of that page."""
    assert broken_links(page) == []


def test_links_are_checked():
    """The link check sees links: the README's into the docs, with an anchor, among them."""
    found = list(links(REPO / "README.md"))
    assert ("docs/reliability.md", "reproducible-what-holds-where") in found and len(found) > 15


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page.write_text("[ok](other.md#a-section) [gone](missing.md) [bad](other.md#no-section)\n")
    assert list(links(page)) == [("other.md", "a-section"), ("missing.md", ""), ("other.md", "no-section")]
    assert anchors(tmp_path / "other.md") == {"other", "a-section"}
    assert broken_links(page) == ["missing.md: no such file", "other.md#no-section: no such heading"]


def test_the_params_reference_is_current():
    """docs/params.md is what scripts/params_reference.py writes from params.yaml and the schema today."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "params_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def test_the_params_reference_names_every_key_with_what_it_accepts():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from params_reference import keys, render
    finally:
        sys.path.pop(0)
    text = "seed: 42  # the seed\nppo:\n  # its learning rate\n  lr: 1e-4\n  reward:\n    whiten: true  # x | y\n"
    assert list(keys(text)) == [
        (["seed"], "42", "the seed"),
        (["ppo"], None, ""),
        (["ppo", "lr"], "1e-4", "its learning rate"),
        (["ppo", "reward"], None, ""),
        (["ppo", "reward", "whiten"], "true", "x | y"),
    ]
    page = render(text, "# Params\n")
    assert "| `ppo.lr` | `1e-4` | a positive float | its learning rate |" in page
    assert "| `ppo.reward.whiten` | `true` | a boolean (true or false) | x \\| y |" in page
    committed = Path(REPO / "docs" / "params.md").read_text()
    for path, _, _ in keys((REPO / "params.yaml").read_text()):
        if len(path) > 1:
            assert f"| `{'.'.join(path)}` |" in committed, path
