"""The shape of the library: no import circles, errors a leaf, thin stages."""

import ast

from tests.conftest import REPO

PACKAGE = REPO / "alignkit"


def imports_of(path, package="alignkit"):
    """Every alignkit module that the file at `path` imports, at the top or inside a function (a lazy import
    hides a circle from Python, not from a reader)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package:  # from alignkit import io, lifeline
                found |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.split(".")[0] == package:
                found.add(node.module)
    return found


def import_graph(root=PACKAGE):
    """{module: the alignkit modules it imports} for every module under `root`."""
    return {
        f"{root.name}.{p.stem}": imports_of(p, root.name) - {f"{root.name}.{p.stem}"} for p in sorted(root.glob("*.py"))
    }


def circles(graph):
    """The import circles of `graph`, each as the list of modules around it (first one repeated at the end)."""
    found, state, path = [], {}, []

    def visit(module):
        state[module], path[len(path) :] = "open", [module]
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        state[module] = "done"
        path.pop()

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_circles_finds_a_lazy_circle_and_a_long_one(tmp_path):
    """The checker itself: a -> b at the top and b -> a inside a function is a circle; so is c -> d -> e -> c."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("import pkg.d\n")
    (pkg / "d.py").write_text("from pkg.e import x\n")
    (pkg / "e.py").write_text("def g():\n    from pkg.c import y\n")
    (pkg / "f.py").write_text("from pkg.a import z\n")  # imports into a circle, is not part of one
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.c", "pkg.d", "pkg.e", "pkg.c"]]


def test_alignkit_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 20 and any(graph.values())  # the modules were found and read
    assert circles(graph) == []


def test_errors_is_a_leaf():
    """alignkit.errors defines every exception and imports nothing of alignkit; what turns them into exit
    codes is alignkit.stage."""
    assert import_graph()["alignkit.errors"] == set()
    defined = {
        f"alignkit.{path.stem}": [
            node.name
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.ClassDef)
            and any(getattr(b, "id", "").endswith(("Error", "Interrupt", "Exception")) for b in node.bases)
        ]
        for path in PACKAGE.glob("*.py")
    }
    assert {module for module, names in defined.items() if names} == {"alignkit.errors"}, defined
    assert {"BadRow", "BusyError", "Orphaned", "TrainingError", "Terminated"} <= set(defined["alignkit.errors"])


# How a stage runs and stops, not what it computes: a change to these never changes an output, so dvc.yaml does
# not list them (a fix to a message would otherwise rerun the whole pipeline).
RUNTIME = {"alignkit.errors", "alignkit.io", "alignkit.stage", "alignkit.lifeline", "alignkit"}


def reached(graph, start):
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    return seen


def test_each_stage_depends_on_the_library_code_it_runs():
    """dvc.yaml lists, per stage, every alignkit module the stage's script imports (transitively, lazy imports
    included) that can change what it computes, and no other: a code change reruns exactly the stages it can
    affect."""
    import yaml

    graph = import_graph()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        script = REPO / stage["cmd"].split()[1]  # the script its command runs (judge@ runs stages/reward.py)
        needed = {f"alignkit/{m.split('.')[1]}.py" for m in reached(graph, imports_of(script)) - RUNTIME}
        listed = {d for d in stage["deps"] if d.startswith("alignkit/")}
        assert listed == needed, (name, "missing:", sorted(needed - listed), "not imported:", sorted(listed - needed))


def top_level_imports(path):
    """The modules a file imports when it is run or imported: its top-level statements only, not its functions'."""
    found = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "alignkit" else {node.module}
    return found


def imports_torch_at_once(path, seen=None):
    """Whether running the file imports torch before any of its functions is called: itself, or through the
    alignkit modules it imports at its top (third-party libraries that pull torch in are the subprocess's part)."""
    seen = set() if seen is None else seen
    for module in top_level_imports(path) - seen:
        seen.add(module)
        if module.split(".")[0] == "torch":
            return True
        if module.split(".")[0] == "alignkit" and (REPO / f"{module.replace('.', '/')}.py").is_file():
            if imports_torch_at_once(REPO / f"{module.replace('.', '/')}.py", seen):
                return True
    return False


def test_every_stage_that_computes_with_torch_imports_it_before_pinning_threads():
    """stage.pin_threads pins only where torch is imported when a stage's arguments are parsed: every stage that
    trains, scores or merges imports it with its own module; the others never start it (a second and a half
    each), checked by running their modules' top levels in one process."""
    import subprocess
    import sys

    computes = {"reward", "sft", "dpo", "ppo", "online", "merge", "evaluate"}
    stages = {path.stem: path for path in sorted((REPO / "stages").glob("*.py"))}
    assert {name for name, path in stages.items() if imports_torch_at_once(path)} == computes
    script = (
        "import runpy, sys\nfrom alignkit.stage import pin_threads\n"
        "for path in sys.argv[1:]:\n    runpy.run_path(path, run_name='stage')\n"
        "print('torch' in sys.modules, pin_threads())"
    )
    others = [str(stages[name]) for name in sorted(set(stages) - computes)]
    done = subprocess.run([sys.executable, "-c", script, *others], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split() == ["False", "None"], done.stderr


def test_the_torch_import_check_follows_alignkit_modules(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text("import json\nfrom alignkit.stage import run_stage\n\ndef main():\n    import torch\n")
    assert not imports_torch_at_once(stage)
    stage.write_text("from alignkit.policy import answer_token_logps\n")  # alignkit/policy.py imports torch
    assert imports_torch_at_once(stage)


def test_no_training_stage_reads_a_judge():
    """Judges (params `judges`, stage judge@<name>, models/judge/) are read by evaluation only: a training stage
    that depended on one -- its model directory or its params -- would let the policy be trained on its judge."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    training = ("reward", "sft", "dpo", "ppo", "merge")
    for name in training:
        stage = stages[name].get("do", stages[name])
        deps = [str(d) for d in stage.get("deps", [])]
        params = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        assert not [d for d in deps if d.startswith("models/judge") or d == "models"], (name, deps)
        assert not [p for p in params if p.startswith("judges") or p == "params.yaml"], (name, params)
    # ... while the evaluations read them, and the judges train on the judge split only.
    assert "models/judge" in stages["evaluate"]["do"]["deps"] and "judges" in stages["evaluate"]["do"]["params"]
    assert "--section judges" in stages["judge"]["do"]["cmd"]
    judge_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["judge"]["do"]["outs"]]
    assert "models/judge/${key}" in judge_outs
