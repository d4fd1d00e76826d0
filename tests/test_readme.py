"""The README's two commands are the ones CI and users run."""

import re

from tests.conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_opens_with_the_run_and_test_commands():
    run, test = readme_commands()[:2]
    assert run.endswith("pip install -r requirements.txt && dvc repro")
    assert test.endswith("pip install -r requirements-dev.txt && python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    test = readme_commands()[1]
    ci_lines = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert test in ci_lines
    assert "set -euo pipefail" in ci_lines  # pytest's exit code 5 (no tests) fails CI


def test_every_params_key_has_a_comment():
    """Each key in params.yaml has a comment on the line above or at the end of its line."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*\w+:", line):
            assert "#" in line or lines[i - 1].strip().startswith("#"), f"line {i + 1} has no comment: {line!r}"
