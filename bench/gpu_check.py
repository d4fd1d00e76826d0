"""The CUDA check: the pipeline's GPU paths in one run of a few minutes, for a lent GPU (docs/gpu.md).

    python bench/gpu_check.py --out bench/gpu_results.json      # on a CUDA machine
    python bench/gpu_check.py --profile tiny --out /tmp/r.json  # the same checks at toy size on a CPU (the test);
                                                                # what needs CUDA is listed under "skipped"
    python bench/gpu_check.py --plan                            # rewrite bench/gpu_plan.json from dvc.yaml

It needs no DVC (the GPU machine has none): the stages, their commands and their order come from
bench/gpu_plan.json, which DVC itself wrote from dvc.yaml here (--plan; a test keeps it current). Sections,
each written into --out as it ends (a run cut short keeps what finished), settings in bench/gpu_check.yaml:

1. at_scale (first: it needs no pipeline run, so a run cut short still has it): the DPO step at GPT-2-Medium size:
   time and MFU in fp32 and bf16 (against the matmul peak measured in the same run), fp16's loss scale, and peak
   memory of full training against LoRA and QLoRA.
2. pipeline: every stage of dvc.yaml, each its own process, in a copy of the repository on the sample with the
   default presets; the stages of one level side by side. Each stage's time, peak GPU memory and last line.
3. qlora: sft, dpo and merge again as the book runs them: LoRA on a 4-bit nf4 base, paged AdamW, gradient
   checkpointing (dpo), bf16. Then the merged model against the adapter on its 4-bit base it was trained as.
4. quantization: our quantize_nf4 against transformers' from_pretrained with a BitsAndBytesConfig on the same
   weights (CUDA only: transformers 4.45 refuses a quantization_config without it).
5. precision: the dpo stage in bf16 autocast and fp16 (with loss scaling) against its fp32 run.

Exits 1 when any check failed, after writing every result.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from pipeline import override_params
from run import load_settings as bench_settings
from run import (
    merge,
    worker,  # a section of bench/compare.py in a fresh process (its own peak GPU memory)
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PLAN = BENCH / "gpu_plan.json"

GOALS = {"mfu_bf16": 0.35, "qlora_memory": 0.35}


# ---------------------------------------------------------------- the plan (written here, where DVC is)


def make_plan(repo=REPO):
    """[{name, cmd, after, outs}] in the order `dvc repro` runs the stages, read from dvc.yaml by DVC itself;
    after: the stages whose outputs it reads."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        graph = dvc.index.graph  # edges point from a stage to the stages it depends on
        order = [s for s in reversed(list(nx.topological_sort(graph))) if s.cmd]
        return [
            {
                "name": s.name,
                "cmd": s.cmd,
                "after": sorted(d.name for d in graph.successors(s) if d.cmd),
                "outs": sorted(str(o.def_path) for o in s.outs),
            }
            for s in order
        ]


def load_settings(path, profile, gpu):
    """The profile of --config (bench/gpu_check.yaml) over the bench/config.yaml profile it names in `bench`: that
    one's pipeline params and rows and its at_scale (on CUDA, with its gpu rows), then `common`, then its own keys."""
    config = yaml.safe_load(Path(path).read_text())
    profiles = [p for p in config if p != "common"]
    if profile not in profiles:
        raise SystemExit(f"error: {path}: no profile '{profile}' (profiles: {', '.join(profiles)})")
    own = merge(config.get("common", {}), config[profile])
    base = bench_settings(BENCH / "config.yaml", own["bench"], gpu)
    return merge({"pipeline": base["pipeline"], "at_scale": base["at_scale"]}, own)


def levels(plan):
    """The plan's stages grouped so that each group's stages depend only on earlier groups'."""
    level = {}
    for stage in plan:  # in DVC's order: every stage after the ones it depends on
        level[stage["name"]] = 1 + max((level[a] for a in stage["after"]), default=-1)
    return [[s for s in plan if level[s["name"]] == n] for n in range(max(level.values()) + 1)]


# ---------------------------------------------------------------- running stages without DVC


def repo_files():
    """The repository's files as the GPU machine gets them (tracked and untracked-but-not-ignored: git ls-files; where
    there is no git repository, as in that machine's copy, every file but the wheels and caches), less .dvc/: the
    stages run there without DVC, and dvclive, finding no DVC repository, writes its curves alone (with one, it
    would load DVC's config and repository code, which the carried wheels leave out)."""
    import subprocess

    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*")]
    skip = {".git", ".venv", ".whl", ".dvc", "__pycache__", ".ruff_cache", ".pytest_cache", "site"}
    return [name for name in listed if name and (REPO / name).is_file() and not skip & set(Path(name).parts)]


def copy_repo(dest, plan):
    """The repository at dest without any stage output (each stage writes its own anew)."""
    for name in repo_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    for out in (o for stage in plan for o in stage["outs"]):
        target = dest / out
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_stage(work, stage, threads):
    """One stage as its own process: {name, seconds, gpu_peak_mib, rss_mib, last line}, or {name, error}."""
    from harness import run_measured

    with tempfile.NamedTemporaryFile(suffix=".json") as peak:
        _, script, *args = stage["cmd"].split()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        cmd = [sys.executable, str(BENCH / "stage_memory.py"), peak.name, script, *args]
        try:
            seconds, rss, out = run_measured(cmd, work, env)
        except RuntimeError as err:
            return {"name": stage["name"], "error": str(err)[-3000:]}
        lines = [line for line in out.splitlines() if line.strip()]
        return {
            "name": stage["name"],
            "seconds": round(seconds, 2),
            "gpu_peak_mib": json.loads(Path(peak.name).read_text())["gpu_peak_mib"],
            "rss_mib": round(rss),
            "said": lines[-1][:300] if lines else "",
        }


def run_stages(work, stages, jobs, log):
    """Each group of `stages` (a list of lists) in turn, the stages of a group side by side; stops at the first
    group with a failed stage (the next ones read its outputs). The stages' records, in plan order."""
    done = []
    threads = max(1, (os.cpu_count() or 2) // jobs)
    with ThreadPoolExecutor(jobs) as pool:
        for group in stages:
            records = list(pool.map(lambda s: run_stage(work, s, threads), group))
            for r in records:
                said = f"FAILED\n{r['error']}" if "error" in r else f"{r['seconds']:.1f}s  {r['said']}"
                log(f"  {r['name']}: {said}")
            done += records
            if any("error" in r for r in records):
                break
    return done


def by_name(plan, *names):
    return [[s for s in plan if s["name"] == n] for n in names]


# ---------------------------------------------------------------- the run


SECTION_NAMES = ("at_scale", "pipeline", "qlora", "quantization", "precision")


def run(settings, out_path, log, sections=SECTION_NAMES):
    """The sections named (qlora, quantization and precision read the pipeline section's run), in the order of
    SECTION_NAMES; results into out_path after each."""
    import torch
    from harness import machine

    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    plan = json.loads(PLAN.read_text())
    results = {"machine": machine(), "settings": settings, "skipped": [], "failures": []}

    def save():
        results["seconds"] = round(time.perf_counter() - started, 1)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(results, indent=2) + "\n")

    def section(name, fn):
        log(f"{name} ...")
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:  # one section's failure must not cost the others' results on a lent machine
            results["failures"].append(f"{name}: {traceback.format_exc()[-3000:]}")
            log(f"{name}: FAILED\n{results['failures'][-1]}")
        log(f"{name}: {time.perf_counter() - t:.0f}s")
        save()

    work = Path(tempfile.mkdtemp(prefix="alignkit-gpu-"))
    main, pipe = work / "main", settings["pipeline"]
    skip = set(pipe["skip"])
    results["skipped"] += [f"stage {n}: in pipeline.skip of bench/gpu_check.yaml" for n in sorted(skip)]

    def pipeline():
        copy_repo(main, plan)
        override_params(main, pipe["params"], pipe["rows"])
        stages = [[s for s in group if s["name"] not in skip] for group in levels(plan)]
        records = run_stages(main, [g for g in stages if g], pipe["jobs"], log)
        failed = [r["name"] for r in records if "error" in r]
        ran = {r["name"] for r in records}
        missing = [s["name"] for s in plan if s["name"] not in ran | skip]
        if failed or missing:
            results["failures"].append(f"pipeline: failed {failed}, not run {missing}")
        return {"stages": records}

    def copy_with(name, overrides, reads):
        """A copy of the pipeline run with params overrides, holding the outputs of the stages in `reads`."""
        dest = work / name
        copy_repo(dest, plan)
        shutil.copy2(main / "params.yaml", dest / "params.yaml")
        override_params(dest, overrides, None)
        for out in (o for s in plan if s["name"] in reads for o in s["outs"]):
            if (main / out).is_dir():
                shutil.copytree(main / out, dest / out)
            elif (main / out).exists():
                (dest / out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(main / out, dest / out)
        return dest

    prepared = [s["name"] for s in plan if s["name"].startswith(("prepare@", "pretrained", "reward@", "judge@"))]

    def qlora():
        cfg = settings["qlora"]
        precision = {f"{stage}.precision": cfg["precision"] for stage in ("sft", "dpo")}
        dest = copy_with("qlora", {**cfg["params"], **precision}, prepared)
        records = run_stages(dest, by_name(plan, "sft", "dpo", "merge@sft", "merge@dpo"), 1, log)
        if any("error" in r for r in records):
            results["failures"].append("qlora: a stage failed")
            return {"stages": records}
        check = worker("merge_check", dest, precision=cfg["precision"])
        if not (check["exact_ok"] and check["nf4_ok"]):
            results["failures"].append(f"qlora: merged model off its adapter: {check}")
        return {"stages": records, "merge_check": check}

    def quantization():
        out = worker("quant_paths", main, precision=settings["qlora"]["precision"])
        if "skipped" in out:
            results["skipped"].append(f"quantization: {out['skipped']}")
        elif not out["ok"]:
            results["failures"].append("quantization: quantize_nf4 and from_pretrained(BitsAndBytesConfig) differ")
        return out

    def precision():
        out = {"fp32": json.loads((main / "metrics/dpo.json").read_text())}
        for p in settings["precisions"]:
            if p == "fp16" and not gpu:
                results["skipped"].append("precision fp16: needs CUDA")
                continue
            dest = copy_with(p, {"dpo.precision": p}, prepared + ["sft"])
            (record,) = run_stages(dest, by_name(plan, "dpo"), 1, log)
            out[p] = json.loads((dest / "metrics/dpo.json").read_text()) if "error" not in record else record
            if "error" in record:
                results["failures"].append(f"precision {p}: the dpo stage failed")
        return out

    def at_scale():
        scale = settings["at_scale"]
        shared = {k: v for k, v in scale.items() if k not in ("lora", "precisions")}  # precisions: the runs below
        runs = [
            ("fp32", {}),
            ("bf16", {}),
            ("fp16, checkpointing", {"precision": "fp16", "checkpointing": True}),
            ("bf16, checkpointing", {"checkpointing": True}),
            ("bf16, checkpointing, LoRA", {"checkpointing": True, "lora": scale["lora"]}),
            ("bf16, checkpointing, QLoRA", {"checkpointing": True, "lora": scale["lora"], "quantization": "nf4"}),
        ]
        rows = {}
        for label, kwargs in runs:
            kwargs = {"precision": label.split(",")[0], **kwargs}
            if kwargs["precision"] == "fp16" and not gpu:
                results["skipped"].append(f"at scale, {label}: fp16 needs CUDA")
                continue
            log(f"  DPO step at scale, {label}")
            rows[label] = worker("dpo_step_at_scale", REPO, **shared, **kwargs)  # reads params.yaml alone
            if not rows[label]["losses_finite"]:
                results["failures"].append(f"at scale, {label}: a loss was not finite")
        full = rows["bf16, checkpointing"]["peak_memory_mib"]
        return {
            "runs": rows,
            "mfu_bf16": rows["bf16"]["mfu"],
            "lora_memory": rows["bf16, checkpointing, LoRA"]["peak_memory_mib"] / full,
            "qlora_memory": rows["bf16, checkpointing, QLoRA"]["peak_memory_mib"] / full,
        }

    # The figures at scale first: they need no pipeline run, and a run cut short still brings them back.
    if "at_scale" in sections:
        section("at_scale", at_scale)
    if "pipeline" in sections:
        section("pipeline", pipeline)
        if "pipeline" in results and not any(f.startswith("pipeline") for f in results["failures"]):
            for name, fn in (("qlora", qlora), ("quantization", quantization), ("precision", precision)):
                if name in sections:
                    section(name, fn)
    if "at_scale" in results:
        a = results["at_scale"]
        results["goals"] = {
            name: {"value": a[name], "goal": goal, "met": a[name] >= goal if name == "mfu_bf16" else a[name] <= goal}
            for name, goal in GOALS.items()
        }
    save()
    shutil.rmtree(work, ignore_errors=True)
    log(summary(results))
    return results


def summary(results):
    """A few lines: the machine, each section's outcome and figures."""
    m = results["machine"]
    lines = [f"GPU: {m['gpu'] or 'none'} (torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']})"]
    for r in results.get("pipeline", {}).get("stages", []):
        peak = f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if r.get("gpu_peak_mib") else ""
        lines.append(f"  {r['name']}: " + ("FAILED" if "error" in r else f"{r['seconds']:.1f}s{peak}"))
    check = results.get("qlora", {}).get("merge_check")
    if check:
        lines.append(
            f"QLoRA merge: merged vs unmerged {check['merged_vs_unmerged_max_nats']:.2g} nats, vs its 4-bit adapter "
            f"{check['merged_vs_4bit_adapter_max_nats']:.3g} (base in 4 bits alone: "
            f"{check['base_vs_4bit_base_max_nats']:.3g})"
        )
    for label, r in results.get("at_scale", {}).get("runs", {}).items():
        lines.append(
            f"DPO step at scale, {label}: {r['step_s']:.3f}s, MFU {r['mfu']:.2f}, peak {r['peak_memory_mib']:.0f} MiB"
            + (f", loss scale {r['loss_scale']:.0f}" if r.get("loss_scale") else "")
        )
    for name, g in results.get("goals", {}).items():
        lines.append(f"{name}: {g['value']:.3f} (goal {g['goal']}: {'met' if g['met'] else 'not met'})")
    lines += [f"skipped: {s}" for s in results["skipped"]]
    lines += [f"FAILED: {f.splitlines()[0]}" for f in results["failures"]]
    lines.append(f"{results['seconds']:.0f}s")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(BENCH / "gpu_check.yaml"))
    ap.add_argument("--profile", default="default", help="a profile of --config: default (a GPU) or tiny (a CPU)")
    ap.add_argument("--out", default=str(BENCH / "gpu_results.json"))
    ap.add_argument(
        "--sections",
        default=",".join(SECTION_NAMES),
        help="comma-separated sections to run (default: all; qlora, quantization and precision need pipeline)",
    )
    ap.add_argument("--plan", action="store_true", help=f"rewrite {PLAN.relative_to(REPO)} from dvc.yaml, and exit")
    args = ap.parse_args(argv)
    if args.plan:
        PLAN.write_text(json.dumps(make_plan(), indent=1) + "\n")
        print(f"wrote {PLAN}")
        return 0
    import torch

    settings = load_settings(args.config, args.profile, torch.cuda.is_available())
    sections = args.sections.split(",")
    unknown = [s for s in sections if s not in SECTION_NAMES]
    if unknown:
        raise SystemExit(f"error: --sections: unknown section '{unknown[0]}' (sections: {', '.join(SECTION_NAMES)})")
    results = run(settings, args.out, lambda msg: print(msg, flush=True), sections)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
