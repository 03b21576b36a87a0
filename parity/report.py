"""Render parity reports: a rich table per case and dtype, a summary, and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parity.compare import CaseReport, StageResult


def _format_bound(stage: StageResult) -> str:
    if stage.bound.kind == "exact":
        return "exact"
    return f"{stage.bound.kind} {stage.bound.value:.1e}"


def render_case(report: CaseReport, console: Console) -> None:
    first = report.first_failure
    title = f"{report.case} | {report.checkpoint} | {report.dtype}"
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("stage", no_wrap=True, min_width=24)
    for column, justify in (("shape", "left"), ("max abs", "right"), ("max rel", "right"),
                            ("bound", "right"), ("status", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for stage in report.stages:
        status = "[green]pass[/]" if stage.passed else f"[red]FAIL[/] {stage.note}".rstrip()
        style = "bold red" if stage is first else None
        table.add_row(stage.stage, "x".join(map(str, stage.shape)) or "scalar", f"{stage.max_abs:.2e}",
                      f"{stage.max_rel:.2e}", _format_bound(stage), status, style=style)
    console.print(table)
    console.print(summary_line(report))


def summary_line(report: CaseReport) -> str:
    first = report.first_failure
    label = f"{report.case} ({report.checkpoint}, {report.dtype})"
    if first is None:
        return f"[green]PASS[/] {label}: {len(report.stages)} stages within bounds"
    failed = sum(not stage.passed for stage in report.stages)
    return f"[red]FAIL[/] {label}: first failing stage [bold]{first.stage}[/] ({failed} of {len(report.stages)} stages fail)"


def render_summary(reports: list[CaseReport], console: Console) -> None:
    console.rule("parity summary")
    for report in reports:
        console.print(summary_line(report))
    failed = [report for report in reports if not report.passed]
    if failed:
        console.print(f"[red]{len(failed)} of {len(reports)} case runs fail[/]")
    else:
        console.print(f"[green]all {len(reports)} case runs pass[/]")


def write_json(reports: list[CaseReport], path: Path, versions: dict[str, str]) -> None:
    document = {"versions": versions, "passed": all(r.passed for r in reports),
                "cases": [report.to_json() for report in reports]}
    path.write_text(json.dumps(document, indent=2, allow_nan=True))
