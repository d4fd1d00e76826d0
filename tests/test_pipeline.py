"""DVC on the real dvc.yaml, in a fresh git copy of the repository (never the working tree)."""

import json
import subprocess
import sys

from tests.conftest import stage_env


def dvc(repo, *args):
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                            env=stage_env(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def ran(output):
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


def test_repro_builds_prepare_then_does_nothing(repo_copy):
    first = dvc(repo_copy, "repro")
    assert ran(first) == ["prepare"]
    metrics = json.loads((repo_copy / "metrics" / "data.json").read_text())
    assert metrics["rows_in"] == metrics["rows_kept"] > 2000
    assert metrics["splits"]["train"] > 1900
    assert 150 <= metrics["splits"]["test"] <= 250 and 150 <= metrics["splits"]["validation"] <= 250
    # The committed dvc.lock already describes these outputs: rebuilding changed nothing.
    diff = subprocess.run(["git", "diff", "HEAD", "--stat", "--", "dvc.lock"], cwd=repo_copy, capture_output=True, text=True)
    assert diff.stdout == "", diff.stdout

    second = dvc(repo_copy, "repro")
    assert ran(second) == []
    assert "Data and pipelines are up to date" in second
    assert "up to date" in dvc(repo_copy, "status")


def test_changing_a_param_reruns_only_its_readers(repo_copy):
    dvc(repo_copy, "repro")
    params_path = repo_copy / "params.yaml"
    params = params_path.read_text()
    params_path.write_text(params.replace("policy: tiny-gpt2", "policy: openai-community/gpt2"))
    assert ran(dvc(repo_copy, "repro")) == []  # prepare does not read models.*

    out = dvc(repo_copy, "exp", "run", "-S", "prepare.val_fraction=5e-2")
    assert ran(out) == ["prepare"]
    assert json.loads((repo_copy / "metrics" / "data.json").read_text())["splits"]["validation"] < 150


def test_bad_input_under_dvc_fails_and_leaves_no_output(repo_copy):
    bad = repo_copy / "data" / "bad.csv"
    bad.write_text("Question,More_Prefered,Less_Prefered\nWhat?,,No.\n")
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "data.path=data/bad.csv"],
                            cwd=repo_copy, capture_output=True, text=True, env=stage_env(repo_copy))
    assert result.returncode != 0
    assert "error: data/bad.csv: row 1 (line 2), column 'More_Prefered': empty cell" in result.stderr + result.stdout
    assert not (repo_copy / "data" / "prepared").exists()
    assert not (repo_copy / "metrics" / "data.json").exists()
