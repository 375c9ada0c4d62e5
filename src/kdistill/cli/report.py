"""``kdistill report``: an HTML report (and a markdown twin) of runs and sweeps."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML + markdown report with figures for run or sweep directories",
        description=(
            "Collects every finished run and sweep under the given directories (run directories, "
            "their parents, sweep directories) and writes report.html (self-contained) and "
            "report.md with figures/: learning curves, calibration, student-teacher agreement, "
            "accuracy against swept settings, and the comparison table of models."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--out", default="report", help="directory to write the report into")
    p.add_argument("--title", default="kdistill report")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from kdistill.reporting.report import write_report

    html_path, md_path = write_report(args.paths, args.out, title=args.title)
    print(f"report written: {html_path} and {md_path}")
    return 0
