"""The report stage and the offline plots page: charts that draw, every model side by side, nothing fetched."""

import json
import re
import xml.etree.ElementTree as ET

import pytest
import yaml

from alignkit.report import best_models, offline_template, sample_prompts
from tests.conftest import REPO, run_here

MODELS = ["sft", "dpo", "ppo"]  # as the report orders them: SFT first, then by name
PROMPTS = 12
SVG = "{http://www.w3.org/2000/svg}"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def tsv(name, points):
    return f"step\t{name}\n" + "".join(f"{s}\t{v}\n" for s, v in points)


@pytest.fixture
def outputs(tmp_path):
    """A small pipeline's outputs as the stages lay them out: 3 models, 2 stages' curves, 12 test prompts
    (one of them a two-turn conversation), with known best values."""
    write(
        tmp_path / "metrics/data/helpful.json",
        json.dumps(
            {
                "rows_in": 100,
                "rows_kept": 95,
                "rows_filtered": {"status == tie": 2},
                "rows_dropped": {"empty_cell": 3, "duplicate": 0},
                "splits": {"train": 80, "validation": 8, "test": 7},
                "unsafe_prompts": 0,
            }
        ),
    )
    write(
        tmp_path / "metrics/reward/helpful.json", json.dumps({"val_accuracy": 0.97, "val_loss": 0.1, "val_margin": 5.0})
    )
    write(tmp_path / "metrics/sft.json", json.dumps({"val_loss_before": 7.6, "val_loss": 0.5, "val_perplexity": 1.6}))
    reward_mean = {"sft": 0.5, "dpo": 0.7, "ppo": 0.9}
    violations = {"sft": 0.1, "dpo": 0.2, "ppo": 0.0}
    for m in MODELS:
        write(
            tmp_path / f"metrics/eval/{m}.json",
            json.dumps(
                {
                    "bleu": 0.3,
                    "reward_mean": reward_mean[m],
                    "reward_models": {"helpful": {"mean": 2 * reward_mean[m]}},
                    "safety_violation_rate": violations[m],
                    "kl_to_reference": {"sft": 0.0, "dpo": 3.0, "ppo": 0.4}[m],
                }
            ),
        )
        rows = []
        for i in range(PROMPTS):
            prompt = (
                [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Name a colour."},
                ]
                if i == 3
                else [{"role": "user", "content": f"Question {i}?"}]
            )
            rows.append(
                {
                    "question": f"q{i}",
                    "prompt": prompt,
                    "unsafe": i == 5,
                    "reference": f"Reference {i}.",
                    "answer": f"{m} answer {i} <b>|</b>",
                    "reward": 0.1 * i,
                    "scores": {"helpful": 0.2 * i},
                }
            )
        write(tmp_path / f"generations/{m}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "dvclive/sft/plots/metrics/train/loss.tsv", tsv("loss", [(s, 7 - 0.1 * s) for s in range(60)]))
    write(tmp_path / "dvclive/sft/plots/metrics/train/lr.tsv", tsv("lr", [(s, 1e-3) for s in range(60)]))
    write(tmp_path / "dvclive/sft/plots/metrics/val/loss.tsv", tsv("loss", [(0, 7.6), (30, 1.0), (60, 0.5)]))
    write(tmp_path / "dvclive/reward/helpful/plots/metrics/train/loss.tsv", tsv("loss", [(0, 0.7), (1, 0.5)]))
    write(tmp_path / "dvclive/reward/helpful/metrics.json", "{}")  # dvclive's own summary: not a curve
    return tmp_path


def run_report(root, samples=5):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["report"]["samples"] = samples
    write(root / "params.yaml", yaml.safe_dump(params))
    argv = ["--params", "params.yaml", "--metrics", "metrics", "--live", "dvclive", "--generations", "generations"]
    return run_here("report", [*argv, "--out", "report"], root)


def drawn_marks(svg):
    """{mark kind: [path geometry]} of the data marks Vega drew in an SVG chart (axes and frames left out)."""
    marks = {}
    for group in svg.iter(f"{SVG}g"):
        kind = re.match(r"mark-(\w+) role-mark", group.get("class", ""))
        if kind:
            marks.setdefault(kind.group(1), []).extend(
                p.get("d") or p.get("transform") for p in group if p.tag == f"{SVG}path"
            )
    return marks


def test_the_report_draws_every_chart_and_puts_every_model_side_by_side(outputs):
    result = run_report(outputs)
    assert result.returncode == 0, result.stderr
    assert "3 models, 3 charts, 5 prompts side by side" in result.stdout
    page = (outputs / "report" / "report.html").read_text()
    # Self-contained: no script, and nothing loaded from anywhere (SVG namespaces are names, not fetches).
    assert "<script" not in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    root = ET.fromstring(page.replace("<!DOCTYPE html>", "", 1))

    figures = {f.get("id"): f.find(f"{SVG}svg") for f in root.iter("figure")}
    assert set(figures) == {"chart-comparison", "chart-curves-reward-helpful", "chart-curves-sft"}
    # Every chart has drawn marks: a line through each curve's points, and the validation curve's points.
    sft = drawn_marks(figures["chart-curves-sft"])
    assert len(sft["line"]) == 3 and all(d.count("L") >= 2 for d in sft["line"])  # train/loss, train/lr, val/loss
    assert len(sft["symbol"]) == 3  # val/loss: 3 points drawn (60-point curves get no points)
    reward = drawn_marks(figures["chart-curves-reward-helpful"])
    assert len(reward["line"]) == 1 and reward["line"][0].count("L") == 1
    bars = drawn_marks(figures["chart-comparison"])["rect"]
    # bleu, reward_mean, reward_models.helpful.mean, safety_violation_rate (kl_to_reference is not ranked):
    # one bar per model each; a zero value draws a bar of no width.
    assert len(bars) == 4 * len(MODELS)
    assert sum(1 for d in bars if not re.fullmatch(r"M[\d.]+,[\d.]+h0v[\d.]+h-?0Z", d)) >= 4 * len(MODELS) - 1

    tables = list(root.iter("table"))
    metrics = next(t for t in tables if t.get("class") == "metrics")
    header = [th.text for th in metrics.find("tr")]
    assert header == ["metric", *MODELS]
    best = {
        tr[0].text: [header[i] for i, td in enumerate(tr) if "best" in (td.get("class") or "")]
        for tr in list(metrics)[1:]
    }
    assert best == {
        "bleu": [],
        "reward_mean": ["ppo"],
        "reward_models.helpful.mean": ["ppo"],
        "safety_violation_rate": ["ppo"],
        "kl_to_reference": [],
    }

    answers = next(t for t in tables if t.get("class") == "answers")
    assert [th.text for th in answers.find("tr")] == ["prompt", "reference", *MODELS]
    rows = [tr for tr in answers if tr.get("class") == "sample"]
    assert len(rows) == 5 and all(len(tr) == 2 + len(MODELS) for tr in rows)
    for tr in rows:  # each model's own answer to that row's prompt, with its scores
        i = int(re.search(r"Reference (\d+)", "".join(tr[1].itertext())).group(1))
        for model, td in zip(MODELS, tr[2:]):
            assert "".join(td.itertext()).startswith(f"{model} answer {i} <b>|</b>reward {0.1 * i:.3f}")

    md = (outputs / "report" / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\((charts/[^)]+)\)", md)
    assert sorted(images) == ["charts/comparison.svg", "charts/curves-reward-helpful.svg", "charts/curves-sft.svg"]
    assert all((outputs / "report" / i).is_file() for i in images)
    side = md.split("## Answers side by side")[1].split("##")[0]
    table_rows = [line for line in side.splitlines() if line.startswith("| ")]
    assert table_rows[0] == "| prompt | reference | sft | dpo | ppo |" and len(table_rows) == 2 + 5
    assert all(line.count(" | ") == 4 for line in table_rows[2:])  # the answers' "|" is escaped
    assert "| bleu | 0.3 | 0.3 | 0.3 |" in md and "| reward_mean | 0.5 | 0.7 | **0.9** |" in md


def test_a_conversation_shows_its_turns(outputs):
    assert run_report(outputs, samples=PROMPTS).returncode == 0
    page = (outputs / "report" / "report.html").read_text()
    assert (
        '<p class="turn"><span class="role">user:</span> Hi</p><p class="turn"><span class="role">assistant:'
        '</span> Hello.</p><p class="turn"><span class="role">user:</span> Name a colour.</p>'
    ) in page
    assert page.count('class="unsafe"') == 1


def test_generations_of_other_prompts_fail_in_one_line_and_write_nothing(outputs):
    path = outputs / "generations" / "ppo.jsonl"
    path.write_text(path.read_text().replace('"q4"', '"another"'))
    result = run_report(outputs)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: generations/ppo.jsonl: its prompts are not those of the other models' generations "
        "(rerun the evaluate stages)"
    ]
    assert not (outputs / "report").exists()


def test_the_sample_is_seeded_and_the_same_prompts_for_every_model():
    generations = {
        m: [
            {
                "question": f"q{i}",
                "prompt": [{"role": "user", "content": f"q{i}"}],
                "unsafe": False,
                "reference": "r",
                "answer": f"{m}{i}",
            }
            for i in range(50)
        ]
        for m in MODELS
    }
    a, b = sample_prompts(generations, 6, 42), sample_prompts(generations, 6, 42)
    assert [s["index"] for s in a] == [s["index"] for s in b] and len(a) == 6
    assert [s["index"] for s in sample_prompts(generations, 6, 7)] != [s["index"] for s in a]
    assert all(s["answers"][m]["answer"] == f"{m}{s['index']}" for s in a for m in MODELS)
    assert len(sample_prompts(generations, 80, 42)) == 50  # never more than there are


def test_best_is_the_highest_except_where_lower_is_better_or_unranked():
    assert best_models({"sft": 0.5, "ppo": 0.9, "dpo": 0.9}, "win_rate_vs_reference") == {"ppo", "dpo"}
    assert best_models({"sft": 0.1, "ppo": 0.0}, "safety_violation_rate") == {"ppo"}
    assert best_models({"sft": 0.0, "ppo": 2.0}, "kl_to_reference") == set()
    assert best_models({"sft": 0.3, "ppo": 0.3}, "bleu") == set()  # a tie of all is no best


def test_dvc_plots_show_gets_an_offline_page_template():
    """.dvc/config points `dvc plots show` at plots/offline.html, which inlines Vega, Vega-Lite and Vega-Embed
    (from vl-convert-python, pinned) and leaves out DVC's {scripts}, the CDN tags. Regenerate it after an upgrade:
    python -m alignkit.report --offline-template plots/offline.html"""
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\n\s+html_template = \.\./plots/offline\.html$", config, re.M)
    committed = (REPO / "plots" / "offline.html").read_text(encoding="utf-8")
    assert committed == offline_template(), (
        "regenerate: python -m alignkit.report --offline-template plots/offline.html"
    )
    assert "{plot_divs}" in committed and "{scripts}" not in committed
    assert "window.vegaEmbed=" in committed and not re.search(r"<script[^>]+src=", committed)


def test_the_verdict_opens_the_report_and_a_metric_all_zero_is_said_in_words(outputs):
    """With metrics/compare.json (the compare stage's), the page opens with the verdict; the proxy-against-judge
    chart is drawn; a metric every model scores 0 on is named in words instead of drawn as an empty frame; and
    the side-by-side sample takes in the unsafe prompt, one among 12."""
    from alignkit.verdict import compare

    judged = {"sft": 0.0, "dpo": 0.1, "ppo": 1.0}  # ppo clearly best by the judges, dpo no better than sft
    generations = {}
    for m in MODELS:
        path = outputs / f"generations/{m}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for i, r in enumerate(rows):
            r.update(judge=judged[m] + 0.01 * (i % 3), set="helpful")
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        generations[m] = rows
        metrics = json.loads((outputs / f"metrics/eval/{m}.json").read_text())
        metrics.update(safety_violation_rate=0.0, safety_violation_rate_ci=[0.0, 0.0], n_unsafe=1)
        write(outputs / f"metrics/eval/{m}.json", json.dumps(metrics))
    evals = {m: json.loads((outputs / f"metrics/eval/{m}.json").read_text()) for m in MODELS}
    write(outputs / "metrics/compare.json", json.dumps(compare(generations, evals, 0.95, 500, 0, kl_warn=2.0)))
    result = run_report(outputs)
    assert result.returncode == 0, result.stderr
    page = (outputs / "report" / "report.html").read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Data</h2>")
    assert "<p>ppo: the highest judge score, 1.010 [" in page and "KL to SFT 0.400." in page
    assert "Safety violations 0.000 [0.000, 0.000] of 1 unsafe prompts." in page
    assert "Every model scores 0 on safety_violation_rate: not drawn." in page
    assert 'id="chart-gains"' in page and "dpo vs ppo" in page
    md = (outputs / "report" / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Data") and "charts/gains.svg" in md
    side = md.split("## Answers side by side")[1]
    assert "*(marked unsafe)*" in side  # the one unsafe prompt is in a sample of 5
