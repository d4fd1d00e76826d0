"""The report: one page that shows a run -- data, reward models, every model's metrics side by side, the training
curves and, for a fixed sample of test prompts, every model's answer -- as self-contained HTML (charts inlined as
SVG: no script, no network) and its Markdown twin (charts as SVG files beside it).

It reads only what the pipeline wrote (paths relative to the roots the stage is given):

    metrics/data/<set>.json       rows in, filtered, dropped by reason, kept; splits    (prepare)
    metrics/reward/<name>.json    each reward model's validation accuracy               (reward)
    metrics/<stage>.json          sft, dpo, ppo results                                  (training stages)
    metrics/judge/<name>.json     each judge's accuracy on the test pairs                (judge)
    metrics/eval/<model>.json     the evaluation of each model, with intervals          (evaluate)
    metrics/compare.json          models against SFT and each other, the verdict         (compare)
    dvclive/**/plots/metrics/*/<curve>.tsv   per-step curves, train/* and val/*          (training stages)
    generations/<model>.jsonl     each model's answers to the test prompts, with rewards (evaluate)

Charts are Vega-Lite specs drawn to SVG by vl-convert, which runs Vega itself in an embedded JavaScript engine
(no browser); offline_template() gives `dvc plots show` the same libraries, inlined, so its page draws offline too.
"""

import csv
import html
import json
import random
from collections import Counter
from pathlib import Path

from alignkit.errors import DataError

VEGA_LITE = "5.21"  # the Vega-Lite major version DVC's plot templates are written for (their $schema is v5)
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
# Best per metric: higher is better, except these; some describe an answer rather than rank it.
LOWER_IS_BETTER = {"safety_violation_rate"}
NOT_RANKED = {"reward_std", "kl_to_reference", "mean_length", "n", "n_unsafe", "n_pairs"}
# How to read DPO's training curves (trl issue #800): shown beside them.
DPO_NOTE = (
    "How to read DPO's curves: the chosen reward (beta times the policy's log-prob of the chosen answer, minus the "
    "reference's) often falls while the margin grows -- both answers lose probability, the rejected one faster. "
    "DPO optimises the margin, so a falling chosen reward is not by itself a failure; watch the margin, the reward "
    "accuracy, and the KL to the reference in the evaluation."
)
STAGE_ORDER = ("reward", "sft", "dpo", "ppo")  # pipeline order of the curves' sections


# ---------------------------------------------------------------- reading the pipeline's outputs


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read it as JSON ({str(err).splitlines()[0]})") from None


def read_json_dir(directory):
    """{file stem: parsed JSON} of every *.json in directory, by name."""
    return {p.stem: read_json(p) for p in sorted(Path(directory).glob("*.json"))}


def flatten(metrics, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}: nested metrics (reward_models.<name>.mean) as DVC names them."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_curves(plots_dir):
    """[{curve: 'train/loss', step, value}] from a dvclive plots/metrics directory (one TSV per curve)."""
    rows = []
    for path in sorted(Path(plots_dir).rglob("*.tsv")):
        curve = path.relative_to(plots_dir).with_suffix("").as_posix()
        with open(path, newline="", encoding="utf-8") as f:
            for record in csv.DictReader(f, delimiter="\t"):
                rows.append({"curve": curve, "step": int(record["step"]), "value": float(record[path.stem])})
    return rows


def training_curves(live_root):
    """{stage: rows} for every dvclive directory under live_root, in pipeline order (reward@<name>, sft, dpo, ppo)."""
    found = {}
    for plots in Path(live_root).rglob("plots/metrics"):
        parts = plots.parent.parent.relative_to(live_root).parts  # ('reward', 'helpful') or ('sft',)
        found["@".join(parts)] = read_curves(plots)

    def order(stage):
        base = stage.split("@")[0]
        return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), stage)

    return {stage: found[stage] for stage in sorted(found, key=order) if found[stage]}


def read_generations(directory, models):
    """{model: [generation rows]} for each model's generations/<model>.jsonl; every model answers the same prompts."""
    out = {}
    for model in models:
        path = Path(directory) / f"{model}.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            out[model] = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read the generations ({str(err).splitlines()[0]})") from None
    questions = {m: [g["question"] for g in rows] for m, rows in out.items()}
    first = next(iter(questions.values()), [])
    for model, qs in questions.items():
        if qs != first:
            raise DataError(
                f"{Path(directory) / (model + '.jsonl')}: its prompts are not those of the other models' "
                "generations (rerun the evaluate stages)"
            )
    return out


# ---------------------------------------------------------------- what the report shows


def ordered_models(names):
    """SFT first (the baseline every win rate is against), then the others by name."""
    return sorted(names, key=lambda m: (m != "sft", m))


def ranked(metric):
    """Whether a metric (reward_models.helpful.mean: by its last part) has a better direction."""
    return metric.split(".")[-1] not in NOT_RANKED


def numbers(values):
    """{model: value} without the values that are not numbers (a metric a model lacks is None)."""
    return {m: v for m, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def best_models(values, metric):
    """The models with the best value of `metric` ({model: value}); none when it is not ranked or all are equal."""
    found = numbers(values)
    if not ranked(metric) or len(set(found.values())) < 2:
        return set()
    best = (min if metric in LOWER_IS_BETTER else max)(found.values())
    return {m for m, v in found.items() if v == best}


def metric_table(evals):
    """[(metric, {model: value}, {best models}, {model: interval})] over the union of the models' flattened
    metrics, in file order; a metric's interval (<metric>_ci) goes beside it, not in a row of its own. A best
    value is marked only when its interval does not overlap any other model's: a lead inside the noise is none."""
    flat = {m: flatten(e) for m, e in evals.items()}
    names = [k for k in dict.fromkeys(k for f in flat.values() for k in f) if not k.endswith("_ci")]
    rows = []
    for k in names:
        values = {m: f.get(k) for m, f in flat.items()}  # None where a model lacks the metric
        cis = {m: f.get(f"{k}_ci") for m, f in flat.items()}
        best = best_models(values, k)
        if len(best) == 1 and all(cis.values()):
            (winner,) = best
            lo, hi = cis[winner]
            if any(not (hi < c[0] or lo > c[1]) for m, c in cis.items() if m != winner):
                best = set()
        rows.append((k, values, best, cis))
    return rows


def all_zero(table):
    """The ranked metrics every model scores exactly 0 on: said in words, not drawn as an empty chart."""
    return [k for k, values, _, _ in table if ranked(k) and numbers(values) and not any(numbers(values).values())]


def sample_prompts(generations, n, seed):
    """A fixed sample (seeded) of n test prompts: [{prompt, set, unsafe, reference, answers: {model: generation}}],
    stratified: the prompts of each data set, and within it the unsafe and the other prompts, take turns, so
    a small sample still shows every kind."""
    models = list(generations)
    first_rows = generations[models[0]] if models else []
    strata = {}
    for i, g in enumerate(first_rows):
        strata.setdefault((g.get("set", ""), bool(g.get("unsafe"))), []).append(i)
    rng = random.Random(seed)
    queues = [rng.sample(strata[key], len(strata[key])) for key in sorted(strata)]
    picked = []
    while len(picked) < min(n, len(first_rows)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    picked.sort()
    rows = []
    for i in picked:
        first = generations[models[0]][i]
        rows.append(
            {
                "index": i,
                "prompt": first["prompt"],
                "set": first.get("set", ""),
                "unsafe": first["unsafe"],
                "reference": first["reference"],
                "answers": {m: generations[m][i] for m in models},
            }
        )
    return rows


def data_rows(data_metrics):
    """One row per data set: (set, rows in, filtered out, dropped (by reason), kept, train/val/test, unsafe)."""
    rows = []
    for name, d in data_metrics.items():
        dropped = {k: v for k, v in d["rows_dropped"].items() if v}
        rows.append(
            [
                name,
                d["rows_in"],
                sum(d["rows_filtered"].values()),
                sum(dropped.values()),
                ", ".join(f"{k} {v}" for k, v in dropped.items()) or "none",
                d["rows_kept"],
                " / ".join(str(d["splits"].get(s, 0)) for s in ("train", "validation", "test", "judge")),
                d["unsafe_prompts"],
            ]
        )
    return rows


DATA_HEADER = [
    "set",
    "rows in",
    "filtered out",
    "dropped",
    "dropped by reason",
    "kept",
    "train / val / test / judge",
    "unsafe prompts",
]


# ---------------------------------------------------------------- charts (Vega-Lite -> SVG)


def curves_spec(stage, rows):
    """Small multiples of every curve of one training stage, each on its own y scale; a validation curve (a few
    points) gets its points drawn."""
    counts = Counter(r["curve"] for r in rows)
    values = [{**r, "points": counts[r["curve"]]} for r in rows]
    curves = sorted(counts, key=lambda c: (not c.startswith("train/"), c))
    return {
        "$schema": SCHEMA,
        "title": f"{stage}: training curves",
        "data": {"values": values},
        "facet": {"field": "curve", "type": "nominal", "sort": curves, "title": None},
        "columns": 4,
        "spec": {
            "width": 180,
            "height": 110,
            "layer": [
                {
                    "mark": {"type": "line", "strokeWidth": 1.5},
                    "encoding": {
                        "x": {"field": "step", "type": "quantitative", "title": "step"},
                        "y": {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}},
                    },
                },
                {
                    "transform": [{"filter": "datum.points <= 30"}],
                    "mark": {"type": "point", "filled": True, "size": 25},
                    "encoding": {
                        "x": {"field": "step", "type": "quantitative"},
                        "y": {"field": "value", "type": "quantitative"},
                    },
                },
            ],
        },
        "resolve": {"scale": {"y": "independent", "x": "independent"}},
    }


def comparison_spec(table, models):
    """One bar per model for each ranked metric of the evaluation, each metric on its own scale (its name wrapped
    at its dots); a metric every model scores 0 on is left out (all_zero says it in words)."""
    zero = set(all_zero(table))
    values = [
        {"metric": metric, "model": m, "value": v}
        for metric, by_model, _, _ in table
        if ranked(metric) and metric not in zero
        for m, v in numbers(by_model).items()
    ]
    return {
        "$schema": SCHEMA,
        "title": "Model comparison on the test split",
        "data": {"values": values},
        "facet": {
            "field": "metric",
            "type": "nominal",
            "sort": list(dict.fromkeys(v["metric"] for v in values)),
            "title": None,
            "header": {"labelExpr": "split(replace(datum.label, regexp('_', 'g'), ' '), '.')", "labelLimit": 180},
        },
        "columns": 4,
        "spec": {
            "width": 180,
            "height": 18 * len(models),
            "mark": "bar",
            "encoding": {
                "y": {"field": "model", "type": "nominal", "sort": models, "title": None},
                "x": {"field": "value", "type": "quantitative", "title": None},
                "color": {"field": "model", "type": "nominal", "sort": models, "legend": None},
            },
        },
        "resolve": {"scale": {"x": "independent"}},
    }


def gains_spec(models):
    """Each model's gain over SFT on the proxy (the reward models it trained on) against its gain on the judges:
    on the diagonal, the judges agree with the proxy; below it, the policy gained on the proxy alone."""
    values = [
        {"model": m, "proxy": e["reward_gain_vs_sft"], "judge": e["judge_gain_vs_sft"]}
        for m, e in models.items()
        if "judge_gain_vs_sft" in e
    ]
    top = max([abs(v[k]) for v in values for k in ("proxy", "judge")] + [0.1])
    axis = {"type": "quantitative", "scale": {"domain": [-top * 1.1, top * 1.1]}}
    return {
        "$schema": SCHEMA,
        "title": {"text": ["Gain over SFT: proxy (the reward models PPO trained on)", "against judge (held out)"]},
        "width": 320,
        "height": 320,
        "layer": [
            {
                "data": {"values": [{"x": -top * 1.1, "y": -top * 1.1}, {"x": top * 1.1, "y": top * 1.1}]},
                "mark": {"type": "line", "color": "#999", "strokeDash": [4, 4]},
                "encoding": {"x": {"field": "x", **axis}, "y": {"field": "y", **axis}},
            },
            {
                "data": {"values": values},
                "mark": {"type": "point", "filled": True, "size": 90},
                "encoding": {
                    "x": {"field": "proxy", **axis, "title": "proxy score gain over SFT"},
                    "y": {"field": "judge", **axis, "title": "judge score gain over SFT"},
                    "color": {"field": "model", "type": "nominal", "legend": None},
                },
            },
            {
                "data": {"values": values},
                "mark": {"type": "text", "dx": 8, "align": "left"},
                "encoding": {
                    "x": {"field": "proxy", **axis},
                    "y": {"field": "judge", **axis},
                    "text": {"field": "model"},
                },
            },
        ],
    }


def to_svg(spec):
    import vl_convert

    return vl_convert.vegalite_to_svg(spec, vl_version=VEGA_LITE)


def offline_template():
    """An HTML page template for `dvc plots show` (`plots.html_template` in .dvc/config) with Vega, Vega-Lite and
    Vega-Embed inlined, so the page draws with no network. DVC fills {plot_divs}; the template has no {scripts},
    where DVC would put its CDN <script src=...> tags."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=f"v{VEGA_LITE}")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n'
        "    <title>DVC Plot</title>\n"
        f"    <!-- Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, Vega-Embed "
        f"{vl_convert.get_vega_embed_version()}, from vl-convert-python: python -m alignkit.report "
        "--offline-template plots/offline.html -->\n"
        f'    <script type="text/javascript">{bundle}</script>\n'
        "    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n"
        "</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- the report


def build(metrics_root, live_root, generations_root, samples, seed):
    """Everything the report shows, as plain data, and its charts as {file stem: (title, SVG text)}."""
    metrics_root = Path(metrics_root)
    evals = read_json_dir(metrics_root / "eval")
    if not evals:
        raise DataError(f"{metrics_root / 'eval'}: no evaluation metrics (<model>.json) to report")
    models = ordered_models(evals)
    evals = {m: evals[m] for m in models}
    table = metric_table(evals)
    curves = training_curves(live_root)
    charts = {"comparison": ("Model comparison on the test split", to_svg(comparison_spec(table, models)))}
    compared = read_json(metrics_root / "compare.json") if (metrics_root / "compare.json").is_file() else None
    if compared and any("judge_gain_vs_sft" in e for e in compared["models"].values()):
        charts["gains"] = ("Proxy gain against judge gain", to_svg(gains_spec(compared["models"])))
    for stage, rows in curves.items():
        charts[f"curves-{stage.replace('@', '-')}"] = (f"{stage}: training curves", to_svg(curves_spec(stage, rows)))
    return {
        "models": models,
        "data": data_rows(read_json_dir(metrics_root / "data")),
        "reward": read_json_dir(metrics_root / "reward"),
        "judges": read_json_dir(metrics_root / "judge"),
        "compare": compared,
        "all_zero": all_zero(table),
        "training": read_json_dir(metrics_root),
        "table": table,
        "samples": sample_prompts(read_generations(generations_root, models), samples, seed),
        "charts": charts,
    }


def fmt(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"
    return str(value)


def answer_scores(generation):
    judged = [f"judge {generation['judge']:.3f}"] if "judge" in generation else []
    return ", ".join(
        judged + [f"reward {generation['reward']:.3f}"] + [f"{k} {v:.2f}" for k, v in generation["scores"].items()]
    )


def cell(value, interval):
    """'0.719 [0.66, 0.77]': a value with its interval, when it has one."""
    return fmt(value) + (f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else "")


def verdict_lines(compare):
    """The verdict section's paragraphs: the verdict, the trade-off, what was compared; [] without compare.json."""
    if not compare:
        return []
    v = compare["verdict"]
    score = "judges' combined score" if compare["score"] == "judge" else "reward models' combined score"
    return [
        v["text"],
        v["tradeoff"],
        f"Paired bootstrap over the {compare['n']} test prompts on the {score}, at confidence "
        f"{compare['confidence']:g}; every interval below is at the same level.",
    ]


def test_rows(compare):
    """(pair, difference, interval, p, significant) of every paired test."""
    if not compare:
        return []
    return [
        (
            pair,
            t["diff"],
            f"[{t['ci'][0]:.3g}, {t['ci'][1]:.3g}]",
            "<0.001" if t["p"] == 0 else f"{t['p']:.3f}",
            "yes" if t["significant"] else "no",
        )
        for pair, t in compare["tests"].items()
    ]


def vs_sft_rows(compare):
    """(model, win rate vs SFT on the proxy, on the judges, proxy gain, judge gain) for every model but SFT."""
    if not compare:
        return []
    rows = []
    for m, e in compare["models"].items():
        if "win_rate_vs_sft" not in e:
            continue
        judged = "judge_win_rate_vs_sft" in e
        rows.append(
            (
                m,
                cell(e["win_rate_vs_sft"], e["win_rate_vs_sft_ci"]),
                cell(e["judge_win_rate_vs_sft"], e["judge_win_rate_vs_sft_ci"]) if judged else "",
                fmt(e["reward_gain_vs_sft"]),
                fmt(e["judge_gain_vs_sft"]) if judged else "",
            )
        )
    return rows


VS_SFT_HEADER = ["model", "win rate vs SFT (proxy)", "win rate vs SFT (judges)", "proxy gain", "judge gain"]
TEST_HEADER = ["models (a vs b)", "mean a - b", "interval", "p", "significant"]


def training_rows(training):
    """(stage, its headline results) for the policy stages' metrics files."""
    keys = {
        "sft": ["val_loss_before", "val_loss", "val_perplexity"],
        "dpo": ["objective", "val_loss_before", "val_loss", "val_preference_accuracy", "val_margin"],
        "ppo": ["val_score_before", "val_score_after", "kl", "kl_coef", "response_length"],
    }
    return [
        (stage, ", ".join(f"{k} {fmt(m[k])}" for k in keys[stage] if k in m))
        for stage, m in training.items()
        if stage in keys
    ]


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;padding:0 20px;
max-width:1280px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}th,td{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:bold;background:#e6f4ea}.turn{margin:0 0 4px}.role{font-weight:bold;color:#555}
.scores{color:#666;font-size:0.85em;margin-top:4px}.unsafe{color:#b00;font-weight:bold}.set{color:#555}
.verdict{background:#f4f8ff;border-left:4px solid #36c;padding:4px 14px}.note{color:#444;max-width:900px}
table.answers td{width:18%}table.answers td.prompt{width:22%}figure{margin:12px 0}"""


def _cells(row, tag="td"):
    return "".join(f"<{tag}>{html.escape(fmt(c))}</{tag}>" for c in row)


def to_html(report):
    """The self-contained page: inline CSS and SVG, nothing fetched."""
    models = report["models"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/><title>alignkit report</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>alignkit report</h1>",
        f"<p>Models: {', '.join(models)}. Built by the <code>report</code> stage from the pipeline's metrics, "
        "dvclive curves and generations.</p>",
    ]
    if report["compare"]:
        lines = verdict_lines(report["compare"])
        out += ['<h2>Verdict</h2><div class="verdict">', *(f"<p>{html.escape(x)}</p>" for x in lines), "</div>"]
    out += [
        "<h2>Data</h2>",
        f"<table><tr>{_cells(DATA_HEADER, 'th')}</tr>",
    ]
    out += [f"<tr>{_cells(r)}</tr>" for r in report["data"]]
    out.append(
        "</table><h2>Reward models</h2><table><tr><th>reward model</th><th>val accuracy</th>"
        "<th>val loss</th><th>val margin</th></tr>"
    )
    out += [
        f"<tr>{_cells([n, m['val_accuracy'], m['val_loss'], m['val_margin']])}</tr>"
        for n, m in report["reward"].items()
    ]
    if report["judges"]:
        out.append(
            "</table><p>Judges: trained on each set's judge split, which no policy and no reward model above saw, "
            "and read only by evaluation (accuracy on the test pairs).</p><table><tr><th>judge</th>"
            "<th>test accuracy</th><th>test loss</th><th>test margin</th></tr>"
        )
        out += [
            f"<tr>{_cells([n, m['val_accuracy'], m['val_loss'], m['val_margin']])}</tr>"
            for n, m in report["judges"].items()
        ]
    out.append("</table><h2>Training</h2><table><tr><th>stage</th><th>results</th></tr>")
    out += [f"<tr>{_cells(r)}</tr>" for r in training_rows(report["training"])]
    out.append("</table><h2>Evaluation</h2>")
    if report["compare"]:
        out.append(f"<p>Against SFT, per test prompt.</p><table><tr>{_cells(VS_SFT_HEADER, 'th')}</tr>")
        out += [f"<tr>{_cells(r)}</tr>" for r in vs_sft_rows(report["compare"])]
        out.append(
            f"</table><p>Every pair of models, paired over prompts.</p><table><tr>{_cells(TEST_HEADER, 'th')}</tr>"
        )
        out += [f"<tr>{_cells(r)}</tr>" for r in test_rows(report["compare"])]
        out.append("</table>")
    out.append(
        "<p>Each model's metrics, [interval] beside each mean. Best per metric in bold when its interval clears "
        f"every other model's (higher is better, except {', '.join(sorted(LOWER_IS_BETTER))}; "
        f"{', '.join(sorted(NOT_RANKED))} are not ranked).</p>"
    )
    out.append(
        f'<table class="metrics"><tr><th>metric</th>{"".join(f"<th>{html.escape(m)}</th>" for m in models)}</tr>'
    )
    for metric, values, best, cis in report["table"]:
        cells = "".join(
            f'<td class="num{" best" if m in best else ""}">{html.escape(cell(values[m], cis.get(m)))}</td>'
            for m in models
        )
        out.append(f"<tr><td>{html.escape(metric)}</td>{cells}</tr>")
    out.append("</table>")
    if report["all_zero"]:
        out.append(f"<p>Every model scores 0 on {', '.join(report['all_zero'])}: not drawn.</p>")
    for stem, (title, svg) in report["charts"].items():
        if stem in ("comparison", "gains"):
            out.append(f'<figure id="chart-{stem}" title="{html.escape(title)}">{svg}</figure>')
    out.append(
        f"<h2>Answers side by side</h2><p>{len(report['samples'])} test prompts, the same sample every run "
        "(seeded), taken in turn from each data set and from its unsafe and other prompts; judge is the judges' "
        "combined score, reward the combined reward PPO is trained on, then each reward model's raw score.</p>"
    )
    out.append(
        '<table class="answers"><tr><th>prompt</th><th>reference</th>'
        + "".join(f"<th>{html.escape(m)}</th>" for m in models)
        + "</tr>"
    )
    for s in report["samples"]:
        turns = "".join(
            f'<p class="turn"><span class="role">{html.escape(t["role"])}:</span> {html.escape(t["content"])}</p>'
            for t in s["prompt"]
        )
        mark = f'<p class="set">{html.escape(s["set"])}</p>' if s["set"] else ""
        mark += '<p class="unsafe">marked unsafe</p>' if s["unsafe"] else ""
        answers = "".join(
            f'<td>{html.escape(g["answer"])}<div class="scores">{html.escape(answer_scores(g))}</div></td>'
            for g in s["answers"].values()
        )
        out.append(
            f'<tr class="sample"><td class="prompt">{turns}{mark}</td>'
            f"<td>{html.escape(s['reference'])}</td>{answers}</tr>"
        )
    out.append("</table><h2>Training curves</h2>")
    for stem, (title, svg) in report["charts"].items():
        if stem not in ("comparison", "gains"):
            note = f'<p class="note">{html.escape(DPO_NOTE)}</p>' if stem == "curves-dpo" else ""
            out.append(f'{note}<figure id="chart-{stem}" title="{html.escape(title)}">{svg}</figure>')
    out.append("</body></html>\n")
    return "\n".join(out)


def _md(value):
    return html.escape(fmt(value), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _md_row(cells):
    return "| " + " | ".join(cells) + " |"


def to_markdown(report, chart_dir):
    """The Markdown twin: the same tables, the charts as images from chart_dir (relative to the .md file)."""
    models = report["models"]
    out = [
        "# alignkit report",
        "",
        f"Models: {', '.join(models)}.",
        "",
    ]
    if report["compare"]:
        out += ["## Verdict", ""] + [x + "\n" for x in verdict_lines(report["compare"])]
    out += [
        "## Data",
        "",
        _md_row(DATA_HEADER),
        _md_row(["---"] * len(DATA_HEADER)),
    ]
    out += [_md_row([_md(c) for c in r]) for r in report["data"]]
    out += [
        "",
        "## Reward models",
        "",
        _md_row(["reward model", "val accuracy", "val loss", "val margin"]),
        _md_row(["---"] * 4),
    ]
    out += [
        _md_row([_md(v) for v in (n, m["val_accuracy"], m["val_loss"], m["val_margin"])])
        for n, m in report["reward"].items()
    ]
    if report["judges"]:
        out += [
            "",
            "Judges (trained on each set's judge split, read only by evaluation; accuracy on the test pairs):",
            "",
            _md_row(["judge", "test accuracy", "test loss", "test margin"]),
            _md_row(["---"] * 4),
        ]
        out += [
            _md_row([_md(v) for v in (n, m["val_accuracy"], m["val_loss"], m["val_margin"])])
            for n, m in report["judges"].items()
        ]
    out += ["", "## Training", "", _md_row(["stage", "results"]), _md_row(["---"] * 2)]
    out += [_md_row([_md(c) for c in r]) for r in training_rows(report["training"])]
    out += ["", "## Evaluation", ""]
    if report["compare"]:
        out += [_md_row(VS_SFT_HEADER), _md_row(["---"] * len(VS_SFT_HEADER))]
        out += [_md_row([_md(c) for c in r]) for r in vs_sft_rows(report["compare"])]
        out += ["", _md_row(TEST_HEADER), _md_row(["---"] * len(TEST_HEADER))]
        out += [_md_row([_md(c) for c in r]) for r in test_rows(report["compare"])]
        out.append("")
    out += [
        f"Each model's metrics, [interval] beside each mean. Best per metric in bold when its interval clears every "
        f"other model's (higher is better, except {', '.join(sorted(LOWER_IS_BETTER))}; "
        f"{', '.join(sorted(NOT_RANKED))} are not ranked).",
        "",
        _md_row(["metric", *models]),
        _md_row(["---"] * (len(models) + 1)),
    ]
    for metric, values, best, cis in report["table"]:
        shown = {m: html.escape(cell(values[m], cis.get(m)), quote=False).replace("|", "\\|") for m in models}
        out.append(_md_row([_md(metric)] + [f"**{shown[m]}**" if m in best else shown[m] for m in models]))
    if report["all_zero"]:
        out += ["", f"Every model scores 0 on {', '.join(report['all_zero'])}: not drawn."]
    out += [
        "",
        f"![Model comparison on the test split]({chart_dir}/comparison.svg)",
        "",
        *([f"![Proxy gain against judge gain]({chart_dir}/gains.svg)", ""] if "gains" in report["charts"] else []),
        "## Answers side by side",
        "",
        _md_row(["prompt", "reference", *models]),
        _md_row(["---"] * (len(models) + 2)),
    ]
    for s in report["samples"]:
        prompt = "<br>".join(f"**{t['role']}:** {_md(t['content'])}" for t in s["prompt"])
        prompt += f" *({s['set']})*" if s["set"] else ""
        prompt += " *(marked unsafe)*" if s["unsafe"] else ""
        out.append(
            _md_row(
                [prompt, _md(s["reference"])]
                + [f"{_md(g['answer'])}<br>*{_md(answer_scores(g))}*" for g in s["answers"].values()]
            )
        )
    out += ["", "## Training curves", ""]
    for stem, (title, _) in report["charts"].items():
        if stem not in ("comparison", "gains"):
            out += [DPO_NOTE + "\n"] if stem == "curves-dpo" else []
            out.append(f"![{title}]({chart_dir}/{stem}.svg)\n")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m alignkit.report --offline-template plots/offline.html
    import argparse

    parser = argparse.ArgumentParser(description="Write the offline page template of `dvc plots show`.")
    parser.add_argument("--offline-template", required=True)
    target = Path(parser.parse_args().offline_template)
    target.write_text(offline_template(), encoding="utf-8")
    print(f"wrote {target}")
