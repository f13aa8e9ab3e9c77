"""Scenario results: metrics with their same-run baselines and ratios, targets with PASS/FAIL,
rendered as a readable table and as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import ratio


@dataclass
class Metric:
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    reps: list[Any] = field(default_factory=list)  # per-repetition values (median is ``value``)
    baseline_reps: list[Any] = field(default_factory=list)


@dataclass
class Target:
    name: str
    rule: str
    value: float | None
    passed: bool | None  # None: not measured

    @property
    def verdict(self) -> str:
        return "n/m" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass
class ScenarioResult:
    number: int
    title: str
    metrics: list[Metric] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def metric(self, name: str, value: float | None, unit: str, baseline: float | None = None,
               baseline_name: str = "", reps: list | None = None,
               baseline_reps: list | None = None) -> Metric:
        m = Metric(name, value, unit, baseline, baseline_name, ratio(value, baseline),
                   reps or [], baseline_reps or [])
        self.metrics.append(m)
        return m

    def target(self, name: str, rule: str, value: float | None, passed: bool | None) -> Target:
        t = Target(name, rule, value, passed)
        self.targets.append(t)
        return t

    @property
    def status(self) -> str:
        if self.error:
            return "ERROR"
        verdicts = [t.passed for t in self.targets]
        if any(v is False for v in verdicts):
            return "FAIL"
        if not verdicts or all(v is None for v in verdicts):
            return "NOT MEASURED"
        if any(v is None for v in verdicts):
            return "PARTIAL"
        return "PASS"

    def to_json(self) -> dict:
        data = asdict(self)
        data["status"] = self.status
        for t, raw in zip(self.targets, data["targets"]):
            raw["verdict"] = t.verdict
        return data


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit in ("x",):
        return f"{value:.2f}×"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(results: list[ScenarioResult]) -> str:
    lines = []
    w = (46, 16, 16, 9)
    head = f"{'metric':<{w[0]}} {'gateway':>{w[1]}} {'baseline':>{w[2]}} {'ratio':>{w[3]}}"
    for r in results:
        lines.append("")
        lines.append(f"== {r.number}. {r.title}  [{r.status}]  ({r.seconds:.0f}s)")
        if r.error:
            lines.append(f"   ERROR: {r.error.strip().splitlines()[-1]}")
        if r.metrics:
            lines.append("   " + head)
            for m in r.metrics:
                lines.append(f"   {m.name:<{w[0]}} {fmt(m.value, m.unit):>{w[1]}} "
                             f"{fmt(m.baseline, m.unit):>{w[2]}} {fmt(m.ratio, 'x'):>{w[3]}}")
        for t in r.targets:
            lines.append(f"   target {t.name}: {t.rule} → {fmt(t.value)} [{t.verdict}]")
        for note in r.notes:
            lines.append(f"   note: {note}")
    return "\n".join(lines)


def markdown(results: list[ScenarioResult]) -> str:
    """The figures as Markdown tables (pasted into docs/performance.md)."""
    out = ["| # | metric | gateway | baseline | ratio |", "|---|---|---:|---:|---:|"]
    for r in results:
        for m in r.metrics:
            base = fmt(m.baseline, m.unit) + (f" ({m.baseline_name})" if m.baseline_name else "")
            out.append(f"| {r.number} | {m.name} | {fmt(m.value, m.unit)} | "
                       f"{base if m.baseline is not None else '—'} | {fmt(m.ratio, 'x')} |")
    out += ["", "| # | target | rule | measured | verdict |", "|---|---|---|---:|---|"]
    for r in results:
        for t in r.targets:
            out.append(f"| {r.number} | {t.name} | {t.rule} | {fmt(t.value)} | **{t.verdict}** |")
    return "\n".join(out)
