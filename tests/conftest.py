import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def repo_params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def profile_params(name):
    """params.yaml with profiles/<name> applied (python -m alignkit.profile), as a dict."""
    import tempfile

    from alignkit.profile import apply_profile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        shutil.copy(REPO / "params.yaml", path)
        apply_profile(REPO / "profiles" / name, path)
        return yaml.safe_load(path.read_text())


def stage_env(root=REPO):
    """Environment for a stage or DVC subprocess: this interpreter first on PATH, `root`'s library first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(root)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run_here(name, argv, cwd):
    """`python stages/<name>.py argv` run in this process, in `cwd`, as far as a test of its outcome can tell:
    run_stage's exit code and lines, with stdout and stderr captured (Python warnings written to stderr, as
    the interpreter would); no interpreter to start and nothing to import again. The claims on its outputs
    are dropped and the signal handlers restored when it ends. Returns a CompletedProcess."""
    import contextlib
    import io
    import signal
    import warnings

    from alignkit import io as outputs
    from alignkit import stage

    main, script = stage_main(name), str(REPO / "stages" / f"{name}.py")
    out, err, code = io.StringIO(), io.StringIO(), 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    argv0, here = sys.argv, os.getcwd()
    try:
        os.chdir(cwd)
        sys.argv = [script, *argv]
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("default")
            try:
                stage.run_stage(main, argv)
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        os.chdir(here)
        sys.argv = argv0
        outputs.release()
        stage.set_resume_point(None)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), shown + err.getvalue())


class PrepareRun:
    """Runs stages/prepare.py on a given input, as DVC would, with outputs under tmp_path."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.out_dir = tmp_path / "out" / "prepared"
        self.metrics = tmp_path / "out" / "metrics" / "data.json"

    def __call__(self, input_path, **prepare):
        params = repo_params()
        # No judge split unless a test asks for one: these tests read every kept row back from the three others.
        params["prepare"].update({"judge_fraction": 0.0, **prepare.pop("prepare", {})})
        data, helpful = prepare.pop("data", {}), params["data"]["helpful"]
        # the keys given, the rest as shipped -- but no expected answers: the shipped Answer column is the sample's own
        helpful["columns"] = {**helpful["columns"], "answer": None, **data.pop("columns", {})}
        helpful.update(data)
        assert not prepare, prepare
        params_path = self.tmp / "params.yaml"
        params_path.write_text(yaml.safe_dump(params))
        argv = ["--params", str(params_path), "--name", "helpful", "--input", str(input_path)]
        return run_here("prepare", [*argv, "--out-dir", str(self.out_dir), "--metrics", str(self.metrics)], self.tmp)

    def wrote_nothing(self):
        out = self.tmp / "out"
        return not out.exists() or not any(out.rglob("*"))


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="the full suite: the tests marked slow as well as the fast tier (see docs/development.md)",
    )


def pytest_collection_modifyitems(config, items):
    """Without --full, the tests marked slow are deselected (and counted as such in the summary)."""
    if config.getoption("--full"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_report_header(config):
    if not config.getoption("--full"):
        return "the fast tier: tests marked slow are deselected; `python -m pytest --full` runs every test"
    return "the full suite (--full): every test"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test, and no offline switch hides one."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def prepare(tmp_path):
    return PrepareRun(tmp_path)


def copy_repo(dest):
    """Make `dest` a fresh git repository holding the project's tracked files, as a clone would."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    git_commit(dest, "copy")
    return dest


@pytest.fixture
def repo_copy(tmp_path):
    return copy_repo(tmp_path / "repo")


@pytest.fixture(scope="module")
def repo_copy_factory(tmp_path_factory):
    """Module-scoped copies, for expensive fixtures shared by several tests."""
    return lambda name: copy_repo(tmp_path_factory.mktemp(name) / "repo")


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory):
    """The shipped helpfulness sample, prepared with the repo's params, as data/prepared would hold it:
    the root, with the set in helpful/."""
    from alignkit import data
    from alignkit.params import load_params

    params = load_params(REPO / "params.yaml")
    spec = params.data["helpful"]
    path = REPO / spec.path
    columns, records = data.read_table(path)
    schema, layout = data.resolve_columns(path, columns, spec.schema_, spec.columns.model_dump())
    strict = params.prepare.model_copy(update={"on_bad_row": "error"})
    pairs, _ = data.to_pairs(path, schema, layout, records, strict)
    splits = data.split_pairs(pairs, params.prepare.val_fraction, params.prepare.test_fraction, params.seed)
    root = tmp_path_factory.mktemp("prepared")
    (root / "helpful").mkdir()
    for name, rows in splits.items():
        data.write_split(root / "helpful" / f"{name}.jsonl", rows)
    return root


@pytest.fixture(scope="session")
def prepared_sample(prepared_root):
    """The prepared helpfulness set: {train,validation,test}.jsonl."""
    return prepared_root / "helpful"


def one_reward_model(params):
    """Params of the one-data-set, one-reward-model setup the stage tests run (on prepared_root):
    helpful alone, its raw score as the reward (no whitening), as before there were several."""
    params["reward_models"] = {"helpful": {"data": "helpful", "encoder": None}}
    params["judges"] = {"helpful": {"data": "helpful", "encoder": None}}
    params["ppo"]["reward"].update(
        combine="weighted_sum", weights={"helpful": 1.0}, helpfulness=None, safety=None, whiten=False
    )
    for section in ("sft", "dpo", "ppo", "online", "eval"):
        params[section]["data"] = ["helpful"]
    return params


def write_params(path, **sections):
    """The repo's params.yaml in the one-reward-model setup, with some keys of some sections replaced;
    returns the path."""
    params = one_reward_model(repo_params())
    for section, values in sections.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params))
    return path


def stage_main(name):
    """A stage script's main(argv), to run it in this process."""
    import runpy

    return runpy.run_path(str(REPO / "stages" / f"{name}.py"))["main"]


@pytest.fixture(scope="session")
def reward_model(prepared_sample, tmp_path_factory):
    """The reward stage on the sample, shortened to one epoch: a dir with models/helpful/ (reward_model.pth,
    tokenizer, config, statistics; models/ is what --rewards takes), reward.json and the curves."""
    out = tmp_path_factory.mktemp("reward")
    params = write_params(out / "params.yaml", reward={"epochs": 1})
    stage_main("reward")(
        [
            "--params",
            str(params),
            "--name",
            "helpful",
            "--data",
            str(prepared_sample),
            "--out",
            str(out / "models" / "helpful"),
            "--metrics",
            str(out / "reward.json"),
            "--live",
            str(out / "live"),
            "--checkpoints",
            str(out / "checkpoints"),
        ]
    )
    return out


@pytest.fixture(scope="session")
def sft_model(prepared_root, tmp_path_factory):
    """The sft stage on the sample, shortened to three epochs: a dir with sft/ and sft.json."""
    out = tmp_path_factory.mktemp("sft")
    params = write_params(out / "params.yaml", sft={"epochs": 3})
    stage_main("sft")(
        [
            "--params",
            str(params),
            "--data",
            str(prepared_root),
            "--out",
            str(out / "sft"),
            "--metrics",
            str(out / "sft.json"),
            "--live",
            str(out / "live"),
            "--checkpoints",
            str(out / "checkpoints"),
        ]
    )
    return out


def dvc(repo, *args, env=None):
    """Run a DVC command in `repo`; fail the test with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=stage_env(repo) | (env or {}),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def git_commit(repo, message):
    """Commit everything in `repo` (a test's copy), as a user would after `dvc repro`."""
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
        ],
        cwd=repo,
        check=True,
    )  # empty where this CPU made the same bytes


# The reduced run of the fast tier: the shipped sample cut to a few hundred rows (seeded, before the split) and
# every training stage to its shortest run that still passes every step: prepare, train with checkpoints, resume
# bookkeeping, merge, evaluate, report. Quality is the full tier's (built_repo); this one proves the structure.
SMALL = {
    "data": {"helpful": {"max_rows": 240}, "safety": {"max_rows": 120}, "feedback": {"max_rows": 480}},
    "judges": {"safety": {"batch_size": 16}},  # 24 judge pairs of 120 rows: fewer than the shared batch of 32
    "reward": {"epochs": 1},
    "sft": {"epochs": 2},
    "dpo": {"epochs": 1},
    "ppo": {"max_steps_per_epoch": 4, "ppo_epochs": 2, "checkpoint_every": 2},
    "online": {"max_steps_per_epoch": 2, "checkpoint_every": 1},
}


def merge_into(target, changes):
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value)
        else:
            target[key] = value
    return target


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory):
    """A copy of the repository with SMALL applied to params.yaml (committed), after one `dvc repro`, and what
    that run printed; the rebuilt outputs are committed on top (HEAD). Shared by the fast tier's tests of the
    pipeline's structure: stages, plots, the report, outputs as safetensors, push and pull, rerun sets."""
    repo = copy_repo(tmp_path_factory.mktemp("small") / "repo")
    params = merge_into(yaml.safe_load((repo / "params.yaml").read_text()), SMALL)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_commit(repo, "small sample")
    printed = dvc(repo, "repro")
    git_commit(repo, "small run")
    return repo, printed


@pytest.fixture
def small_copy(small_repo, tmp_path):
    """A private copy of the small built repository, for a test that changes it."""
    dest = tmp_path / "repo"
    shutil.copytree(small_repo[0], dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory):
    """A copy of the repository after one full `dvc repro`, and what that run printed.

    The rebuilt outputs are committed in the copy (HEAD), on top of the project's files as committed
    (HEAD~1): models trained on this machine differ in their last bits from the committed ones when
    this CPU is of another kind, so every later comparison is against this machine's own baseline."""
    repo = copy_repo(tmp_path_factory.mktemp("built") / "repo")
    printed = dvc(repo, "repro")
    git_commit(repo, "baseline rebuilt on this machine")
    return repo, printed


@pytest.fixture
def built_copy(built_repo, tmp_path):
    """A private copy of the built repository, for a test that changes it."""
    dest = tmp_path / "repo"
    shutil.copytree(built_repo[0], dest, symlinks=True)
    return dest
