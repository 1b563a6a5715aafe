"""The one results table, as Markdown: figure, value, anchor, ratio, target, verdict; machine and command."""

from __future__ import annotations

from bench.common import Results, fmt


def _verdict(ok: bool | None) -> str:
    return {True: "ok", False: "**MISS**", None: ""}[ok]


def markdown(results: Results, machine: dict[str, str], command: str, elapsed: float) -> str:
    lines = [
        "## smtp-monitor benchmarks",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min)",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "other load"),
        "",
        f"Other processes on the machine: {machine.get('other load', 'not measured')}. Every figure is "
        "noisier when this is above zero; the CPU-per-probe figures (the measured process's own "
        "utime+stime from /proc) are the least affected.",
        "",
        "| section | figure | agent | anchor | ratio | target | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in results.rows:
        value = f"{fmt(row.value)} {row.unit}".strip()
        anchor = f"{fmt(row.anchor)} ({row.anchor_name})" if row.anchor is not None else ""
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        figure = row.figure + (f" — {row.note}" if row.note else "")
        lines.append(f"| {row.section} | {figure} | {value} | {anchor} | {ratio} | {row.target} | {_verdict(row.ok)} |")
    if results.notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in results.notes]
    return "\n".join(lines) + "\n"
