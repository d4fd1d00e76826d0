"""Preference data named on the Hugging Face Hub (data.<set>.hub), read offline from a Hub-layout cache.

Each test builds a temporary Hugging Face cache holding a dataset repository as the Hub's snapshot_download
leaves it (hub/datasets--owner--name/snapshots/<commit>/..., refs/main) and runs the prepare stage as a
subprocess with HF_HOME pointing there and HF_HUB_OFFLINE=1: the code path a Hub id takes, with no network.
"""

import json
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from alignkit.errors import ParamsError
from alignkit.params import load_params
from tests.conftest import REPO, dvc, git_commit, profile_params, repo_params, stage_env

FIRST, SECOND = "081de9022db8bb1fb7de27f7d789b60cba6dbac5", "5a2c0e0f6f3f9d0b1c2d3e4f5a6b7c8d9e0f1a2b"
DATASET = "example-org/tiny-prefs"


def conversation(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def rows(n, offset=0):
    """n rows in the implicit-prompt conversational format, with scores to filter on."""
    out = []
    for i in range(offset, offset + n):
        question = f"What is {i} plus {i}?"
        out.append(
            {
                "prompt": question,
                "chosen": conversation(question, f"{i} plus {i} is {2 * i}."),
                "rejected": conversation(question, f"It is {2 * i + 1}."),
                "score_chosen": float(i % 10),
                "score_rejected": 2.0,
            }
        )
    return out


def add_snapshot(home, dataset, commit, splits, branch="main"):
    """A dataset repository at `commit` in the Hub cache under `home` (HF_HOME), as snapshot_download leaves it."""
    repo = home / "hub" / f"datasets--{dataset.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (snapshot / "data").mkdir(parents=True)
    for split, table in splits.items():
        pq.write_table(pa.Table.from_pylist(table), snapshot / "data" / f"{split}-00000-of-00001.parquet")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot


def hub_params(tmp_path, **hub):
    params = repo_params()
    helpful = params["data"]["helpful"]
    helpful.update(path="data/hub", schema="auto")
    helpful["columns"]["answer"] = None  # the shipped Answer column is the sample's own
    helpful["hub"] = {"id": DATASET, "config": None, "split": "train", "revision": FIRST, **hub}
    helpful["filter"] = [{"column": "score_chosen", "op": ">=", "value": 3}]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def offline(home):
    return stage_env() | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_prepare(tmp_path, params, home):
    out = tmp_path / "out"
    argv = ["--params", str(params), "--name", "helpful", "--input", str(REPO / "data" / "hub")]
    argv += ["--out-dir", str(out / "helpful"), "--metrics", str(out / "helpful.json")]
    command = [sys.executable, str(REPO / "stages" / "prepare.py"), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=offline(home), cwd=tmp_path, timeout=120)


def test_a_cached_hub_dataset_is_read_offline_at_its_pinned_commit(tmp_path):
    home = tmp_path / "hf"
    add_snapshot(home, DATASET, FIRST, {"train": rows(40), "test": rows(10, offset=100)})
    add_snapshot(home, DATASET, SECOND, {"train": rows(30, offset=200)})
    result = run_prepare(tmp_path, hub_params(tmp_path), home)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "helpful.json").read_text())
    files = summary["source"].pop("files")
    assert summary["source"] == {"hub": DATASET, "config": None, "split": "train", "revision": FIRST}
    snapshot = home / "hub" / f"datasets--{DATASET.replace('/', '--')}" / "snapshots" / FIRST
    assert files == {
        f"data/{s}-00000-of-00001.parquet": (snapshot / "data" / f"{s}-00000-of-00001.parquet").stat().st_size
        for s in ("test", "train")
    }
    assert summary["schema"] == "conversational" and summary["rows_in"] == 40
    assert summary["rows_filtered"] == {"score_chosen >= 3": 12} and summary["rows_kept"] == 28
    first = json.loads((tmp_path / "out" / "helpful" / "train.jsonl").read_text().splitlines()[0])
    i = first["row"] - 1
    assert first["prompt"] == [{"role": "user", "content": f"What is {i} plus {i}?"}]
    assert (first["chosen"], first["rejected"]) == (f"{i} plus {i} is {2 * i}.", f"It is {2 * i + 1}.")
    assert f"{DATASET}@{FIRST[:7]} (split train)" in result.stdout
    # Another commit is another data set: the test split of the first, the second's rows.
    result = run_prepare(tmp_path, hub_params(tmp_path, split="test"), home)
    assert result.returncode == 0 and json.loads((tmp_path / "out" / "helpful.json").read_text())["rows_in"] == 10
    result = run_prepare(tmp_path, hub_params(tmp_path, revision=SECOND), home)
    summary = json.loads((tmp_path / "out" / "helpful.json").read_text())
    assert result.returncode == 0 and summary["source"]["revision"] == SECOND and summary["rows_in"] == 30


def test_an_uncached_dataset_fails_in_one_line_that_says_how_to_fetch_it(tmp_path):
    home = tmp_path / "hf"
    add_snapshot(home, DATASET, FIRST, {"train": rows(40)})
    start = time.monotonic()
    result = run_prepare(tmp_path, hub_params(tmp_path, id="example-org/not-cached"), home)
    seconds = time.monotonic() - start
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: data.helpful.hub: example-org/not-cached at 081de9022db8 is not in the Hugging")
    assert "offline mode is on" in line
    assert f"hf download example-org/not-cached --repo-type dataset --revision {FIRST}" in line
    print(f"an uncached Hub id failed in {seconds:.2f} s")  # the benchmark's figure; pytest -s shows it
    # A commit the cache does not hold, of a dataset it does: the same.
    result = run_prepare(tmp_path, hub_params(tmp_path, revision=SECOND), home)
    assert result.returncode == 2 and "is not in the Hugging Face cache" in result.stderr


@pytest.mark.parametrize(
    "hub, key, says",
    [
        ({"split": "validation"}, "data.helpful.hub.split", "no split 'validation' (splits: train)"),
        ({"config": "nope"}, "data.helpful.hub.config", "nope"),
    ],
)
def test_an_unknown_split_or_config_is_one_line_naming_its_key(tmp_path, hub, key, says):
    home = tmp_path / "hf"
    add_snapshot(home, DATASET, FIRST, {"train": rows(40)})
    result = run_prepare(tmp_path, hub_params(tmp_path, **hub), home)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and line.startswith(f"error: {key}: {DATASET}@081de90") and says in line, line
    assert not (tmp_path / "out").exists()


def test_a_branch_name_is_refused_because_dvc_lock_could_not_pin_it(tmp_path):
    with pytest.raises(ParamsError) as err:
        load_params(hub_params(tmp_path, revision="main"))
    assert str(err.value).endswith(
        "data.helpful.hub.revision: 'main' is not a commit hash (40 hex digits); dvc.lock records this value, so it "
        'must name data that cannot change (a branch or tag moves). Its commit: python -c "import huggingface_hub '
        f"as h; print(h.HfApi().dataset_info('{DATASET}', revision='main').sha)\""
    )
    with pytest.raises(ParamsError, match=r"data\.helpful\.hub\.id: expected a string: a Hub dataset id"):
        load_params(hub_params(tmp_path, id="not an id"))


def test_a_hub_set_with_a_file_path_too_is_refused(tmp_path):
    home = tmp_path / "hf"
    params = hub_params(tmp_path)
    out = tmp_path / "out"
    argv = ["--params", str(params), "--name", "helpful", "--input", str(REPO / "data/sample/preferences.csv")]
    argv += ["--out-dir", str(out / "helpful"), "--metrics", str(out / "helpful.json")]
    command = [sys.executable, str(REPO / "stages" / "prepare.py"), *argv]
    result = subprocess.run(command, capture_output=True, text=True, env=offline(home), cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "data.helpful: both path (a file) and hub are set" in result.stderr


@pytest.mark.slow
def test_changing_the_revision_reruns_prepare_and_dvc_lock_pins_it(repo_copy, tmp_path):
    home = tmp_path / "hf"
    add_snapshot(home, DATASET, FIRST, {"train": rows(40)})
    add_snapshot(home, DATASET, SECOND, {"train": rows(30, offset=200)})
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["data"]["helpful"].update(path="data/hub")
    params["data"]["helpful"]["columns"]["answer"] = None  # the shipped Answer column is the sample's own
    params["data"]["helpful"]["hub"] = {"id": DATASET, "config": None, "split": "train", "revision": FIRST}
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo_copy, "repro", "prepare@helpful", env=offline(home))
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]["prepare@helpful"]
    assert lock["params"]["params.yaml"]["data.helpful"]["hub"]["revision"] == FIRST
    git_commit(repo_copy, "the Hub set at its first commit")
    assert "Data and pipelines are up to date" in dvc(repo_copy, "status", "prepare@helpful", env=offline(home))
    params["data"]["helpful"]["hub"]["revision"] = SECOND
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "modified:           data.helpful" in dvc(repo_copy, "status", "prepare@helpful", env=offline(home))
    dvc(repo_copy, "repro", "prepare@helpful", env=offline(home))
    summary = json.loads((repo_copy / "metrics" / "data" / "helpful.json").read_text())
    assert summary["source"]["revision"] == SECOND and summary["rows_in"] == 30


def test_the_book_profile_reads_the_orca_pairs_at_their_pinned_commit_with_the_books_filter(tmp_path):
    """profiles/book.yaml names argilla/distilabel-intel-orca-dpo-pairs at one commit; with that commit in the
    cache (here: orca-style rows, in the Hub's layout), prepare maps and filters it as the book's code does."""
    from tests.test_prepare_inputs import orca_rows

    params = profile_params("book.yaml")
    hub = params["data"]["helpful"]["hub"]
    assert hub == {
        "id": "argilla/distilabel-intel-orca-dpo-pairs",
        "config": None,
        "split": "train",
        "revision": "081de9022db8bb1fb7de27f7d789b60cba6dbac5",
    }
    home = tmp_path / "hf"
    add_snapshot(home, hub["id"], hub["revision"], {"train": orca_rows()})
    params["prepare"].update(val_fraction=0.2, test_fraction=0.2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = run_prepare(tmp_path, path, home)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "helpful.json").read_text())
    assert summary["source"]["revision"] == hub["revision"] and summary["rows_kept"] == 7  # as orca_rows says
    assert summary["rows_filtered"] == {
        'status != "tie"': 5,
        "chosen_score >= 8": 5,
        "in_gsm8k_train == false": 3,
    }
