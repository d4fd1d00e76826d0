"""report: one page showing the whole run, as self-contained HTML and as Markdown.

    python stages/report.py --params params.yaml --metrics metrics --live dvclive --generations generations \
        --out report

Reads params: seed, report.samples. Reads --metrics (data/<set>.json, reward/<name>.json, <stage>.json,
eval/<model>.json), the dvclive curves under --live and the generations under --generations. Writes --out:
report.html (charts inlined as SVG, opens from disk with no network), report.md and charts/*.svg (the Markdown's
images). Every model with metrics under --metrics/eval is shown.
"""

import time

from alignkit.io import atomic_dir
from alignkit.params import load_params
from alignkit.report import build, to_html, to_markdown
from alignkit.stage import run_stage, stage_args


def main(argv=None):
    args = stage_args(__doc__, ("--params", "--metrics", "--live", "--generations", "--out"), argv)
    params = load_params(args.params)
    start = time.perf_counter()
    report = build(args.metrics, args.live, args.generations, params.report.samples, params.seed)
    with atomic_dir(args.out) as tmp:
        (tmp / "report.html").write_text(to_html(report), encoding="utf-8")
        (tmp / "report.md").write_text(to_markdown(report, "charts"), encoding="utf-8")
        (tmp / "charts").mkdir()
        for stem, (_, svg) in report["charts"].items():
            (tmp / "charts" / f"{stem}.svg").write_text(svg, encoding="utf-8")
    print(
        f"report: {args.out}/report.html and report.md ({len(report['models'])} models, "
        f"{len(report['charts'])} charts, {len(report['samples'])} prompts side by side; "
        f"{time.perf_counter() - start:.1f}s)"
    )


if __name__ == "__main__":
    run_stage(main)
