"""Benchmark: every training and evaluation path of the pipeline against the tool a user would
otherwise pick, measured side by side in one run.

    python bench/run.py                  # about 10 minutes on 2 CPU cores; writes bench/results.json
    python bench/run.py --profile tiny   # a minute or two: keeps the benchmark working (the test)

It first runs the whole pipeline in a temporary copy of the repository (each stage's time
and peak memory, then `dvc status` and a no-op `dvc repro`), then runs each comparison in
a worker process of its own on that run's data and models, and prints a table.
Settings: bench/config.yaml. Throughputs are higher-is-better; ratio = ours / theirs.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# ours / peer (or, for hardware efficiency, the share of the same-dtype matmul peak) each path should reach.
GOALS = {
    "reward": 1.3,
    "dpo_default": 2.0,
    "dpo_precompute": 1.3,
    "ppo": 3.0,
    "generation": 7.0,
    "rloo": 1.5,
    "mfu_fp32": 0.4,
    "mfu_bf16": 0.25,
}


def load_settings(path, profile, gpu):
    config = yaml.safe_load(Path(path).read_text())
    if profile not in config:
        raise SystemExit(f"error: {path}: no profile '{profile}' (profiles: {', '.join(config)})")
    settings = merge(config["default"], config[profile])
    return merge(settings, config.get("gpu", {})) if gpu and profile == "default" else settings


def merge(base, over):
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def worker(section, work, **kwargs):
    """Run one section of compare.py in a fresh process; its result dict."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        cmd = [
            sys.executable,
            str(BENCH / "run.py"),
            "--worker",
            section,
            "--work",
            str(work),
            "--kwargs",
            json.dumps(kwargs),
            "--result",
            result.name,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"error: benchmark section {section} {kwargs} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
            )
        return json.loads(Path(result.name).read_text())


def run(settings, out_path, keep):
    import torch
    from harness import machine
    from pipeline import run_pipeline

    from alignkit.training import cpu_has_native_bf16

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    started = time.perf_counter()
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="alignkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    precision = "fp32"  # both sides of every comparison; bf16 is reported separately
    reduced = "bf16"
    w, r = settings["warmup"], settings["repeats"]

    log(f"pipeline run in {work}")
    stages, dvc = run_pipeline(REPO, work, settings["pipeline"], log)
    # Emulated bf16 (a CPU without AVX-512 BF16 or AMX) runs slower than fp32, and at GPT-2-Medium size for
    # tens of minutes: its rows are skipped, and the results say so.
    native = torch.cuda.is_available() or cpu_has_native_bf16()
    skipped = (
        []
        if native
        else [
            f"{reduced}: this CPU has no native bf16 (no AVX-512 BF16, no AMX); emulated "
            f"{reduced} runs slower than fp32, so its rows are skipped"
        ]
    )
    for note in skipped:
        log(f"skipped: {note}")
    log("reward model: ours vs trl RewardTrainer")
    reward = worker("reward", work, precision=precision, warmup=w, repeats=r)
    reward_bf16 = worker("reward", work, precision=reduced, warmup=w, repeats=r, with_peer=False) if native else None
    log("DPO: ours vs trl DPOTrainer (default, precompute_ref_log_probs=True)")
    dpo = worker("dpo", work, precision=precision, warmup=w, repeats=r)
    dpo_bf16 = worker("dpo", work, precision=reduced, warmup=w, repeats=r, with_peer=False) if native else None
    log("PPO: ours vs the notebook loop")
    ppo = worker("ppo", work, precision=precision, warmup=settings["ppo_warmup"], repeats=settings["ppo_repeats"])
    log("RLOO iteration: ours vs trl RLOOTrainer")
    rloo = worker("rloo", work, precision=precision, warmup=settings["ppo_warmup"], repeats=settings["ppo_repeats"])
    log("generation: batched vs one prompt at a time")
    gen = worker(
        "generation",
        work,
        precision=precision,
        warmup=1,
        repeats=settings["generation_repeats"],
        prompts=settings["generation_prompts"],
    )
    scale = settings["at_scale"]
    at_scale = []
    shared = {k: v for k, v in scale.items() if k not in ("precisions", "lora")}
    precisions = [p for p in scale["precisions"] if native or p != reduced]
    for p in precisions:
        log(f"DPO step at scale, {p}")
        at_scale.append(worker("dpo_step_at_scale", work, precision=p, **shared))
    log(f"DPO step at scale, {precisions[-1]}, gradient checkpointing")
    at_scale.append(worker("dpo_step_at_scale", work, precision=precisions[-1], checkpointing=True, **shared))
    # LoRA in the settings of two of the whole-model runs above: the first precision, and with checkpointing.
    for p, checkpointing in ((precisions[0], False), (precisions[-1], True)):
        log(
            f"DPO step at scale, {p}, LoRA r={scale['lora']['r']} on every linear layer"
            f"{', gradient checkpointing' if checkpointing else ''}"
        )
        at_scale.append(
            worker("dpo_step_at_scale", work, precision=p, checkpointing=checkpointing, lora=scale["lora"], **shared)
        )

    # The dpo stage's objectives at scale, in the first run's settings: DPO with a frozen reference held in memory
    # and run at every step (precompute_ref_log_probs: false), and the reference-free SimPO and ORPO.
    for objective in ("sigmoid-live", "simpo", "orpo"):
        log(f"training step at scale, {precisions[0]}, objective {objective}")
        at_scale.append(worker("dpo_step_at_scale", work, precision=precisions[0], objective=objective, **shared))

    log(f"DPO step at scale, {precisions[-1]}, under torch.profiler")
    profile = worker("dpo_step_profile", work, precision=precisions[-1], **shared)

    results = {
        "machine": machine(),
        "settings": settings,
        "skipped": skipped,
        "padding": {
            "reward": reward["padding"],
            "dpo": dpo["padding"],
            "dpo_lm_head_positions_share": dpo["lm_head_positions_share"],
        },
        "comparisons": comparisons(reward, dpo, ppo, rloo, gen, at_scale),
        "online_vs_ppo": online_vs_ppo(work, stages),
        "precision": precision_rows(reward, reward_bf16, dpo, dpo_bf16, at_scale),
        "lora": lora_rows(at_scale),
        "objectives": objective_rows(at_scale),
        "memory": {
            "stages": stages,
            "dpo_step_at_scale": [
                {
                    "precision": a["precision"],
                    "checkpointing": a["checkpointing"],
                    "lora": a["lora"],
                    "objective": a["objective"],
                    "peak_mib": a["peak_memory_mib"],
                }
                for a in at_scale
            ],
        },
        "profile": profile,
        "dvc": dvc,
        "details": {
            "reward": reward,
            "reward_bf16": reward_bf16,
            "dpo": dpo,
            "dpo_bf16": dpo_bf16,
            "ppo": ppo,
            "rloo": rloo,
            "generation": gen,
            "dpo_step_at_scale": at_scale,
        },
        "seconds": time.perf_counter() - started,
    }
    Path(out_path).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    log(f"wrote {out_path} ({results['seconds']:.0f}s)")
    return results


def online_vs_ppo(work, stages):
    """The online stage beside PPO, as the benchmark's pipeline run trained them: the same SFT policy, prompts and
    reward models, and (by default) the same number of generated answers. Each one's held-out gain over SFT by the
    reward models it trained on and by the judges (metrics/compare.json), its KL to SFT on the test prompts, and the
    stage's wall time and peak memory. Goal: the online stage's judge gain at least PPO's, in at most PPO's time."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    compared = json.loads((work / "metrics" / "compare.json").read_text())["models"]
    online = json.loads((work / "metrics" / "online.json").read_text())
    ppo = params["ppo"]
    answers = {
        "ppo": ppo["epochs"] * ppo["max_steps_per_epoch"] * ppo["batch_size"],
        "online": online["answers_generated"],
    }
    rows = {}
    for name in ("ppo", "online"):
        evaluated = json.loads((work / "metrics" / "eval" / f"{name}.json").read_text())
        rows[name] = {
            "answers_generated": answers[name],
            "reward_gain_vs_sft": compared[name]["reward_gain_vs_sft"],
            "judge_gain_vs_sft": compared[name]["judge_gain_vs_sft"],
            "kl_to_sft": evaluated["kl_to_reference"],
            "seconds": stages[name]["seconds"],
            "peak_rss_mib": stages[name]["peak_rss_mib"],
            "peak_gpu_mib": stages[name]["peak_gpu_mib"],
        }
    rows["online"]["algorithm"] = online["algorithm"]
    met = (
        rows["online"]["judge_gain_vs_sft"] >= rows["ppo"]["judge_gain_vs_sft"]
        and rows["online"]["seconds"] <= rows["ppo"]["seconds"]
    )
    return {**rows, "goal": "online judge gain >= PPO's at <= PPO's wall time", "met": met}


def comparisons(reward, dpo, ppo, rloo, gen, at_scale):
    from harness import ratio_row

    rows = [
        ratio_row(
            "reward-model training",
            "pairs/s",
            reward["batch_size"] / reward["ours_step_s"],
            reward["batch_size"] / reward["theirs_step_s"],
            GOALS["reward"],
            "reward stage step",
            "trl RewardTrainer",
            ratio=reward["ratio_theirs"],
            agreement=reward["agreement"],
        ),
        *(
            ratio_row(
                "DPO training",
                "pairs/s",
                dpo["batch_size"] / dpo["ours_step_s"],
                dpo["batch_size"] / dpo[f"theirs_{peer}_step_s"],
                GOALS[f"dpo_{peer}"],
                "dpo stage step",
                f"trl DPOTrainer ({label})",
                ratio=dpo[f"ratio_theirs_{peer}"],
                agreement=dpo[f"agreement_{peer}"],
            )
            for peer, label in (("default", "default"), ("precompute", "precompute_ref_log_probs"))
        ),
        ratio_row(
            "PPO iteration",
            "samples/s",
            ppo["batch_size"] / ppo["ours_step_s"],
            ppo["batch_size"] / ppo["theirs_step_s"],
            GOALS["ppo"],
            "ppo stage loop",
            "notebook loop (one at a time, caches emptied)",
            agreement=ppo["agreement"],
        ),
        ratio_row(
            "RLOO iteration",
            "answers/s",
            rloo["answers"] / rloo["ours_step_s"],
            rloo["answers"] / rloo["theirs_step_s"],
            GOALS["rloo"],
            "online stage, algorithm rloo",
            "trl RLOOTrainer",
            agreement=rloo["agreement"],
        ),
        ratio_row(
            "evaluation generation",
            "answers/s",
            gen["prompts"] / gen["ours_s"],
            gen["prompts"] / gen["theirs_s"],
            GOALS["generation"],
            "batched, left-padded",
            "one prompt at a time",
            agreement=gen["agreement"],
        ),
    ]
    for a in dpo_rows(at_scale):
        if not a["checkpointing"] and not a["lora"]:
            goal = GOALS[f"mfu_{a['precision']}"]
            rows.append(
                {
                    "path": f"hardware efficiency ({a['precision']})",
                    "unit": "FLOP/s",
                    "ours": a["achieved_flops"],
                    "theirs": a["matmul_peak_flops"],
                    "ratio": a["mfu"],
                    "goal": goal,
                    "met": a["mfu"] >= goal,
                    "ours_is": f"DPO step, {a['params'] / 1e6:.0f}M-parameter GPT-2",
                    "theirs_is": f"{a['precision']} matmul peak",
                }
            )
    return rows


def precision_rows(reward, reward_bf16, dpo, dpo_bf16, at_scale):
    """fp32 against bf16 step times, where bf16 ran (the _bf16 sections are None where it was skipped)."""
    rows = [
        {"path": path, "fp32_s": fp32["ours_step_s"], "bf16_s": bf16["ours_step_s"]}
        for path, fp32, bf16 in (
            ("reward step (tiny-bert)", reward, reward_bf16),
            ("DPO step (tiny-gpt2)", dpo, dpo_bf16),
        )
        if bf16 is not None
    ]
    by = {a["precision"]: a for a in dpo_rows(at_scale) if not a["checkpointing"] and not a["lora"]}
    if "fp32" in by and "bf16" in by:
        rows.append(
            {
                "path": f"DPO step ({by['fp32']['params'] / 1e6:.0f}M-parameter GPT-2)",
                "fp32_s": by["fp32"]["step_s"],
                "bf16_s": by["bf16"]["step_s"],
            }
        )
    for row in rows:
        row["speedup"] = row["fp32_s"] / row["bf16_s"]
    return rows


STEP_NAMES = {"sigmoid": "DPO", "sigmoid-live": "DPO (reference run each step)", "simpo": "SimPO", "orpo": "ORPO"}


def dpo_rows(at_scale):
    """The at-scale runs of DPO with precomputed reference log-probs (the other objectives' are objective_rows')."""
    return [a for a in at_scale if a.get("objective", "sigmoid") == "sigmoid"]


def objective_rows(at_scale):
    """SimPO and ORPO against DPO at scale, in the same settings: step time and peak memory of each, beside DPO's
    with its reference held and run each step and DPO's with the reference's log-probs precomputed. Goal: at most
    0.75x the memory of DPO with the reference each step, and a faster step."""
    plain = [a for a in at_scale if "objective" in a and not a["lora"] and not a["checkpointing"]]
    live = next((a for a in plain if a["objective"] == "sigmoid-live"), None)
    if live is None:
        return []
    by = {a["objective"]: a for a in plain if a["precision"] == live["precision"]}
    live, precomputed = by["sigmoid-live"], by["sigmoid"]
    rows = []
    for name in ("simpo", "orpo"):
        a = by[name]
        memory, time_ratio = a["peak_memory_mib"] / live["peak_memory_mib"], a["step_s"] / live["step_s"]
        rows.append(
            {
                "objective": name,
                "path": f"{name} step ({a['params'] / 1e6:.0f}M-parameter GPT-2, {a['precision']})",
                "step_s": a["step_s"],
                "peak_mib": a["peak_memory_mib"],
                "dpo_live_s": live["step_s"],
                "dpo_live_peak_mib": live["peak_memory_mib"],
                "dpo_precomputed_s": precomputed["step_s"],
                "dpo_precomputed_peak_mib": precomputed["peak_memory_mib"],
                "memory_ratio": memory,
                "time_ratio": time_ratio,
                "goal": "memory <= 0.75x and step time < 1x DPO's with the reference run each step",
                "met": memory <= 0.75 and time_ratio < 1,
            }
        )
    return rows


def lora_rows(at_scale):
    """The DPO step at scale, whole model vs LoRA adapter in the same settings: time and peak memory."""
    rows = []
    for lora in (a for a in at_scale if a["lora"]):
        full = next(
            a
            for a in dpo_rows(at_scale)
            if not a["lora"] and a["checkpointing"] == lora["checkpointing"] and a["precision"] == lora["precision"]
        )
        ratio = lora["peak_memory_mib"] / full["peak_memory_mib"]
        rows.append(
            {
                "path": f"DPO step ({full['params'] / 1e6:.0f}M-parameter GPT-2, {full['precision']}, "
                f"checkpointing {'on' if full['checkpointing'] else 'off'})",
                "full_s": full["step_s"],
                "lora_s": lora["step_s"],
                "full_peak_mib": full["peak_memory_mib"],
                "lora_peak_mib": lora["peak_memory_mib"],
                "trainable": lora["trainable"],
                "r": lora["lora"]["r"],
                "memory_ratio": ratio,
                "goal": 0.5,
                "met": ratio <= 0.5,
            }
        )
    return rows


def _num(x):
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.3e}"


def table(results):
    m = results["machine"]
    bf16 = "AMX" if m["amx_bf16"] else "AVX-512 BF16" if m["avx512_bf16"] else "none native"
    lines = [
        f"machine: {m['gpu'] or m['cpu']}, {m['cores']} cores, torch {m['torch']}, trl {m['trl']}"
        f"{'' if m['gpu'] else f', CPU bf16: {bf16}'}",
        "",
        "| path | unit | ours | peer | peer is | ours / peer | goal | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        lines.append(
            f"| {c['path']} | {c['unit']} | {_num(c['ours'])} | {_num(c['theirs'])} | {c['theirs_is']} | "
            f"{c['ratio']:.2f} | ≥ {c['goal']} | {'yes' if c['met'] else 'no'} |"
        )
    pad = results["padding"]
    lines += [
        "",
        "| padding: share of computed positions that are padding | random batches (before) | "
        "length-grouped batches | timed batches, ours | timed batches, peer |",
        "|---|---|---|---|---|",
        f"| reward training | {pad['reward']['random']:.1%} | {pad['reward']['grouped']:.1%} | "
        f"{pad['reward']['ours_timed']:.1%} | {pad['reward']['peer_timed']:.1%} (each side padded apart) |",
        f"| DPO training | {pad['dpo']['random']:.1%} | {pad['dpo']['grouped']:.1%} | {pad['dpo']['timed']:.1%} "
        f"(the LM head runs on {pad['dpo_lm_head_positions_share']:.1%} of positions) | {pad['dpo']['timed']:.1%} |",
    ]
    lines += ["", "| step | fp32 s | bf16 s | bf16 speed-up |", "|---|---|---|---|"]
    for p in results["precision"]:
        lines.append(f"| {p['path']} | {p['fp32_s']:.4g} | {p['bf16_s']:.4g} | {p['speedup']:.2f}x |")
    lines += [f"skipped: {note}" for note in results["skipped"]]
    lines += [
        "",
        "| step | trains | seconds | peak MiB | LoRA / full memory | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["lora"]:
        lines.append(f"| {r['path']} | whole model | {r['full_s']:.4g} | {r['full_peak_mib']:.0f} | | | |")
        lines.append(
            f"| {r['path']} | LoRA r={r['r']}, all linear layers ({r['trainable'] / 1e6:.1f}M parameters) | "
            f"{r['lora_s']:.4g} | {r['lora_peak_mib']:.0f} | {r['memory_ratio']:.2f} | ≤ {r['goal']} | "
            f"{'yes' if r['met'] else 'no'} |"
        )
    if results.get("objectives"):
        r0 = results["objectives"][0]
        lines += [
            "",
            "| step at scale | reference | seconds | peak MiB | / DPO each step: time | memory | goal | met |",
            "|---|---|---|---|---|---|---|---|",
            f"| DPO (sigmoid) | log-probs precomputed, no model held | {r0['dpo_precomputed_s']:.4g} | "
            f"{r0['dpo_precomputed_peak_mib']:.0f} | | | | |",
            f"| DPO (sigmoid) | a frozen copy, run each step | {r0['dpo_live_s']:.4g} | {r0['dpo_live_peak_mib']:.0f} "
            "| 1 | 1 | | |",
        ]
        for r in results["objectives"]:
            lines.append(
                f"| {r['objective']} | none | {r['step_s']:.4g} | {r['peak_mib']:.0f} | {r['time_ratio']:.2f} | "
                f"{r['memory_ratio']:.2f} | < 1, ≤ 0.75 | {'yes' if r['met'] else 'no'} |"
            )
    prof = results["profile"]
    lines += [
        "",
        f"| where one DPO step at scale ({prof['precision']}, {prof['step_s']:.3g} s profiled) spends its "
        f"time: op | calls | self s | share |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{o['op']}` | {o['calls']} | {o['self_s']:.3g} | {o['share']:.1%} |" for o in prof["ops"][:10]]
    gpu = m["gpu"] is not None
    lines += ["", f"| stage | seconds | peak {'GPU memory (torch)' if gpu else 'RSS'} MiB |", "|---|---|---|"]
    for name, s in results["memory"]["stages"].items():
        lines.append(f"| {name} | {s['seconds']:.1f} | {s['peak_gpu_mib' if gpu else 'peak_rss_mib']:.0f} |")
    for a in results["memory"]["dpo_step_at_scale"]:
        lines.append(
            f"| one {STEP_NAMES.get(a.get('objective', 'sigmoid'), a.get('objective'))} step at scale, "
            f"{a['precision']}, gradient checkpointing "
            f"{'on' if a['checkpointing'] else 'off'}{', LoRA' if a['lora'] else ''} | | {a['peak_mib']:.0f} |"
        )
    o = results["online_vs_ppo"]
    lines += [
        "",
        "| same SFT policy, prompts, reward models | answers generated | reward gain vs SFT | judge gain vs SFT | "
        "KL to SFT | seconds | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("ppo", "ppo (trl PPOTrainer)"), ("online", f"online ({o['online']['algorithm']})")):
        r = o[name]
        lines.append(
            f"| {label} | {r['answers_generated']} | {r['reward_gain_vs_sft']:+.3f} | {r['judge_gain_vs_sft']:+.3f} | "
            f"{r['kl_to_sft']:.3f} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    lines.append(f"goal: {o['goal']}: {'met' if o['met'] else 'not met'}")
    d = results["dvc"]
    lines += ["", f"dvc status: {d['status_s']:.2f}s; no-op dvc repro: {d['repro_noop_s']:.2f}s"]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(BENCH / "config.yaml"))
    ap.add_argument("--profile", default="default", help="a profile of --config: default or tiny")
    ap.add_argument("--out", default=str(BENCH / "results.json"))
    ap.add_argument("--keep", help="run the pipeline in this directory and keep it (default: a temporary one)")
    ap.add_argument(
        "--readme",
        action="store_true",
        help="only rewrite the results block of the benchmark page (docs/benchmark.md) from --out "
        "(bench/results.json), and exit",
    )
    ap.add_argument(
        "--objectives",
        action="store_true",
        help="only time the dpo stage's objectives at scale (DPO with its reference precomputed and run each step, "
        "SimPO, ORPO; a few minutes, no pipeline run) and write their rows into --out, keeping the rest of it",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--kwargs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        from compare import run_section

        result = run_section(args.worker, args.work, **json.loads(args.kwargs))
        Path(args.result).write_text(json.dumps(result))
        return
    if args.readme:
        update_page(PAGE, json.loads(Path(args.out).read_text()))
        return
    import torch

    settings = load_settings(args.config, args.profile, torch.cuda.is_available())
    if args.objectives:
        objectives_only(settings, args.out)
        return
    run(settings, args.out, args.keep)


def objective_runs(settings, work, log=print):
    """The at-scale steps objective_rows compares, each in a worker of its own (its own peak memory)."""
    scale = settings["at_scale"]
    shared = {k: v for k, v in scale.items() if k not in ("precisions", "lora")}
    precision = scale["precisions"][0]
    out = []
    for objective in ("sigmoid", "sigmoid-live", "simpo", "orpo"):
        log(f"training step at scale, {precision}, objective {objective}")
        out.append(worker("dpo_step_at_scale", work, precision=precision, objective=objective, **shared))
    return out


def objectives_only(settings, out_path):
    """Time the objectives at scale (needs only params.yaml: the weights come from the model's config) and put their
    rows into the results file, whose other sections stay as the last full run wrote them."""
    from harness import machine

    results = json.loads(Path(out_path).read_text())
    runs = objective_runs(settings, REPO)
    results["objectives"] = objective_rows(runs)
    results["objectives_run"] = {"machine": machine(), "runs": runs}
    Path(out_path).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


# The benchmark page of the docs site, whose results block --readme rewrites.
PAGE = REPO / "docs" / "benchmark.md"
BEGIN = "<!-- bench results: written by `python bench/run.py --readme` from bench/results.json -->"
END = "<!-- end of bench results -->"


def results_block(results):
    """The benchmark page's results block: the table of a results.json, with its machine and run time."""
    return f"{BEGIN}\n\n{table(results)}\n\nThat run took {results['seconds']:.0f} s.\n\n{END}"


def update_page(path, results):
    text = Path(path).read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {path}: no results block ({BEGIN!r} ... {END!r})")
    head, rest = text.split(BEGIN, 1)
    Path(path).write_text(head + results_block(results) + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
