"""Which model to ship: every model against SFT and against each other, and a verdict that says how sure it is.

The input is each model's generations on the same test prompts (evaluate writes them: the proxy score -- the
combined reward of the reward models the policies trained on -- and the judge score -- the same combination of
the judges, which no training step reads) and its metrics. Comparisons are paired over prompts
(stats.paired_test). The verdict ranks by the judge score, not the proxy: a policy that games its training
reward models gains on the proxy alone, and proxy gain against judge gain is the over-optimisation picture
(Gao et al., 2022). Pure functions of plain data; the report stage writes what they return.
"""

from alignkit.stats import bootstrap_ci, mean, paired_test
from alignkit.textmetrics import win_items

BASELINE = "sft"


def judged_by(generations):
    """'judge' when the generations carry judge scores, else 'reward' (no judges: the proxy is all there is)."""
    first = next(iter(generations.values()))
    return "judge" if first and "judge" in first[0] else "reward"


def compare(generations, evals, confidence, n_resamples, seed, kl_warn):
    """{score, n, models: {model: gains and win rates against SFT}, tests: {'a vs b': paired test}, verdict}.

    generations: {model: [rows]} in the same prompt order (sft among them); evals: {model: metrics}."""
    score = judged_by(generations)
    models = list(generations)

    def column(model, key):
        return [row[key] for row in generations[model]]

    def ci(values):
        return bootstrap_ci(values, confidence, n_resamples, seed)

    def test(a, b):
        return paired_test(column(a, score), column(b, score), confidence, n_resamples, seed)

    per_model = {}
    for m in models:
        entry = {f"{score}_mean": mean(column(m, score)), f"{score}_mean_ci": ci(column(m, score))}
        if BASELINE in generations and m != BASELINE:
            same = [a == b for a, b in zip(column(m, "answer"), column(BASELINE, "answer"))]
            for key in dict.fromkeys(("reward", score)):
                wins = win_items(column(m, key), column(BASELINE, key), same)
                name = "win_rate_vs_sft" if key == "reward" else f"{key}_win_rate_vs_sft"
                entry[name], entry[f"{name}_ci"] = mean(wins), ci(wins)
                entry[f"{key}_gain_vs_sft"] = mean(column(m, key)) - mean(column(BASELINE, key))
        per_model[m] = entry
    tests = {f"{a} vs {b}": test(a, b) for i, a in enumerate(models) for b in models[i + 1 :]}
    return {
        "score": score,
        "confidence": confidence,
        "n": len(next(iter(generations.values()))),
        "models": per_model,
        "tests": tests,
        "verdict": verdict(per_model, tests, evals, score, kl_warn),
    }


def _test(tests, a, b):
    """The paired test of a against b (a - b), whichever order it was computed in."""
    if f"{a} vs {b}" in tests:
        return tests[f"{a} vs {b}"]
    t = tests[f"{b} vs {a}"]
    return {**t, "diff": -t["diff"], "ci": [-t["ci"][1], -t["ci"][0]]}


def _p(p):
    """'p=0.012', or 'p<0.001' where no resample came out as far from 0 (the bootstrap's resolution)."""
    return "p<0.001" if p == 0 else f"p={p:.3f}"


def _interval(values):
    return f"[{values[0]:.3f}, {values[1]:.3f}]" if values else "[n/a]"


def verdict(per_model, tests, evals, score, kl_warn):
    """The model with the highest mean `score` whose lead over every other model is significant, or none.

    Returns {best (None: no significant difference), tied (the models the top one does not beat significantly),
    kl, kl_flag, violation_rate and its interval, text (one paragraph), tradeoff (one sentence)}."""
    ranking = sorted(per_model, key=lambda m: per_model[m][f"{score}_mean"], reverse=True)
    top = ranking[0]
    lead = {m: _test(tests, top, m) for m in ranking[1:]}
    tied = [m for m, t in lead.items() if not (t["significant"] and t["diff"] > 0)]
    best = top if not tied else None
    metrics = evals.get(top, {})
    kl = metrics.get("kl_to_reference")
    flag = kl is not None and kl > kl_warn
    violation, violation_ci = metrics.get("safety_violation_rate"), metrics.get("safety_violation_rate_ci")
    what = "judge score" if score == "judge" else "reward-model score (no judges: the proxy the policies trained on)"
    mean_ci = per_model[top][f"{score}_mean_ci"]
    if best:
        runner = ranking[1]
        t = lead[runner]
        text = (
            f"{top}: the highest {what}, {per_model[top][f'{score}_mean']:.3f} {_interval(mean_ci)}, ahead of "
            f"{runner} by {t['diff']:.3f} {_interval(t['ci'])} ({_p(t['p'])}) and of every other model."
        )
    else:
        group = [top, *tied]
        text = (
            f"No significant difference: {', '.join(group)} are not told apart by the {what} "
            f"({top} {per_model[top][f'{score}_mean']:.3f} {_interval(mean_ci)}; "
            + "; ".join(f"{top} - {m} {lead[m]['diff']:.3f} {_interval(lead[m]['ci'])}" for m in tied)
            + ")."
        )
    if kl is not None:
        text += f" KL to SFT {kl:.3f}" + (f", above report.kl_warn={kl_warn:g}: flagged." if flag else ".")
    if violation is not None:
        text += (
            f" Safety violations {violation:.3f} {_interval(violation_ci)} of {metrics.get('n_unsafe')} unsafe prompts."
        )
    gain = per_model[top].get(f"{score}_gain_vs_sft")
    if gain is not None:
        tradeoff = (
            f"{top} buys {gain:+.3f} {score} score over SFT"
            + (f" for a KL of {kl:.2f}" if kl is not None else "")
            + (f" at a violation rate of {violation:.3f}" if violation is not None else "")
            + "."
        )
    else:
        tradeoff = f"{top} is the SFT policy itself: nothing trained after it does better on the {what}."
    return {
        "best": best,
        "top": top,
        "tied": tied,
        "kl": kl,
        "kl_flag": flag,
        "safety_violation_rate": violation,
        "safety_violation_rate_ci": violation_ci,
        "text": text,
        "tradeoff": tradeoff,
    }
