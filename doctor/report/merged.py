"""One report: static findings on a script and its local modules, confirmed or contradicted by a probe run.

Each static finding is looked up in what the run measured. A ``Link`` says whether the run *confirmed*
the mistake (with the numbers), *contradicted* it (the run shows the symptom is absent), or did not
observe anything either way. The linking rules are small functions keyed by rule name, each reading only
the probe's JSON payload, so they can be tested on synthetic payloads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from doctor.core.findings import Finding
from doctor.core.numbers import finite

CONFIRMED, CONTRADICTED, NOT_OBSERVED = "confirmed", "contradicted", "not-observed"

#: Gradient norm growth over the probed steps that only accumulating (never cleared) gradients explain:
#: with stable data the norm of a running sum of t gradients grows roughly like t; healthy runs stay within 2x.
GRAD_GROWTH_CONFIRMS = 3.0
#: Below this growth over >= 5 steps, gradients are plainly being cleared somewhere.
GRAD_GROWTH_CONTRADICTS = 1.5


@dataclass
class Link:
    finding: Finding
    verdict: str
    summary: str
    checks: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.finding.path,
            "line": self.finding.line,
            "rule": self.finding.rule,
            "code": self.finding.code,
            "verdict": self.verdict,
            "summary": self.summary,
            "checks": self.checks,
            "evidence": self.evidence,
        }


Linker = Callable[[Finding, dict[str, Any]], Optional[Link]]
_LINKERS: dict[str, Linker] = {}


def linker(*rules: str) -> Callable[[Linker], Linker]:
    def register(fn: Linker) -> Linker:
        for r in rules:
            _LINKERS[r] = fn
        return fn

    return register



def _check(probe: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
    return next((c for c in probe.get("checks", []) if c.get("name") == name), None)


def _trained(probe: dict[str, Any]) -> bool:
    return int((probe.get("script") or {}).get("steps_observed") or 0) > 0


def _from_check(f: Finding, probe: dict[str, Any], name: str, *, contains: str = "") -> Optional[Link]:
    """A link read off a runtime check that observes the same mistake: its fail confirms (when its summary
    names this cause, ``contains``), its pass contradicts; a skip says why the run could not tell."""
    check = _check(probe, name)
    if check is None:
        return None
    status, summary, ev = check.get("status"), str(check.get("summary", "")), check.get("evidence") or {}
    if status == "fail" and (not contains or contains in summary):
        return Link(f, CONFIRMED, f"confirmed at runtime ({name}): {summary}", [name], ev)
    if status == "pass":
        return Link(f, CONTRADICTED, f"the run contradicts it ({name}): {summary}", [name], ev)
    if status == "skip" and _trained(probe):
        return Link(f, NOT_OBSERVED, f"not observed at runtime ({name}): {summary}", [name], ev)
    return None


@linker("scheduler-before-optimizer")
def _scheduler(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    link = _from_check(f, probe, "scheduler-order")
    if link is not None and link.verdict != NOT_OBSERVED:
        return link
    warned = [w for w in probe.get("warnings", []) if "lr_scheduler.step()" in str(w.get("message", "")) and "optimizer.step()" in str(w.get("message", ""))]
    lrs = (probe.get("series") or {}).get("lr") or []
    first = [g[:4] for g in lrs if g]
    evidence: dict[str, Any] = {"lr_first_steps": first}
    if warned:
        msg = str(warned[0].get("message", "")).split(".")[0]
        evidence["warning"] = warned[0].get("message")
        return Link(f, CONFIRMED, f"confirmed at runtime: PyTorch warned during the run ({msg}); learning rates of the first steps: {first}", ["scheduler-order"], evidence)
    if link is not None:
        return link
    if _trained(probe):
        return Link(f, NOT_OBSERVED, "no scheduler step was observed in the probed steps, and PyTorch raised no scheduler-order warning", [], evidence)
    return None


@linker("missing-zero-grad")
def _zero_grad(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    link = _from_check(f, probe, "gradient-clearing", contains="never cleared")
    if link is not None and link.verdict == CONFIRMED:
        return link
    series = probe.get("series") or {}
    norms = finite(series.get("grad_norm") or [])
    losses = finite(series.get("loss") or [])
    if len(norms) < 3 or norms[0] <= 0:
        return link
    growth = norms[-1] / norms[0]
    loss_change = abs(losses[-1] - losses[0]) / abs(losses[0]) if len(losses) >= 2 and losses[0] else None
    evidence = {"grad_norm_first": norms[0], "grad_norm_last": norms[-1], "growth": growth, "sampled_steps": len(norms), "loss_relative_change": loss_change}
    if growth >= GRAD_GROWTH_CONFIRMS:
        return Link(
            f, CONFIRMED,
            f"confirmed at runtime: the gradient norm grew {growth:.1f}x over {len(norms)} sampled steps ({norms[0]:.3g} -> {norms[-1]:.3g})"
            + (f" while the loss changed by {loss_change:.0%}" if loss_change is not None else "")
            + ": gradients are adding up across steps",
            ["gradient-flow"], evidence,
        )
    if link is not None:
        return link
    if growth <= GRAD_GROWTH_CONTRADICTS and len(norms) >= 5:
        return Link(f, CONTRADICTED, f"the run contradicts it: the gradient norm stayed within {growth:.2f}x over {len(norms)} sampled steps, so gradients are cleared somewhere the static analysis did not see", ["gradient-flow"], evidence)
    return Link(f, NOT_OBSERVED, f"the gradient norm changed {growth:.2f}x over {len(norms)} sampled steps: not conclusive", ["gradient-flow"], evidence)


@linker("zero-grad-after-backward")
def _zero_grad_after_backward(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    return _from_check(f, probe, "gradient-clearing", contains="between backward() and optimizer.step()")


@linker("unscaled-accumulation-loss")
def _accumulation(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    return _from_check(f, probe, "gradient-accumulation")


def _loss_input(f: Finding, probe: dict[str, Any], kind: str, contains: str) -> Optional[Link]:
    check = _check(probe, "loss-input")
    if check is None or kind not in (check.get("evidence") or {}):
        return None  # the run saw no call of that loss on the training path
    ev = (check.get("evidence") or {})[kind]
    if check.get("status") == "fail" and contains in str(check.get("summary", "")):
        text = next(part for part in str(check["summary"]).split("; ") if contains in part)
        return Link(f, CONFIRMED, f"confirmed at runtime (loss-input): {text}", ["loss-input"], ev)
    return Link(f, CONTRADICTED, f"the run contradicts it (loss-input): inputs to {kind} ranged over "
                f"[{ev.get('min', float('nan')):.3g}, {ev.get('max', float('nan')):.3g}], not what this mistake gives", ["loss-input"], ev)


@linker("softmax-before-cross-entropy")
def _softmax(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    return _loss_input(f, probe, "cross_entropy", "cross_entropy receives probabilities")


@linker("sigmoid-before-bce-with-logits")
def _sigmoid(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    return _loss_input(f, probe, "bce_logits", "binary_cross_entropy_with_logits receives")


@linker("nll-without-log-softmax")
def _nll(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    return _loss_input(f, probe, "nll", "nll_loss receives")


@linker("bad-init")
def _init(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    names = ("initial-loss", "dead-activations", "output-diversity", "gradient-flow")
    bad = [c for c in (_check(probe, n) for n in names) if c and c.get("status") in ("fail", "warn")]
    ran = [c for c in (_check(probe, n) for n in names) if c and c.get("status") in ("pass",)]
    if bad:
        text = "; ".join(f"{c['name']}: {c.get('summary', '')}" for c in bad)
        return Link(f, CONFIRMED, f"confirmed at runtime: {text}", [c["name"] for c in bad], {c["name"]: c.get("evidence") for c in bad})
    if ran and len(ran) >= 2:
        return Link(f, NOT_OBSERVED, "the run showed no init symptom (initial loss, dead units, output diversity all passed)", [c["name"] for c in ran], {})
    return None


@linker("detached-loss-input", "non-leaf-parameter")
def _flow(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    error = (probe.get("script") or {}).get("error") or {}
    if f.rule == "non-leaf-parameter" and "non-leaf" in str(error.get("message", "")):
        # Current PyTorch refuses a non-leaf tensor in an optimizer outright.
        where = f" at line {error['line']}" if error.get("line") else ""
        return Link(f, CONFIRMED, f"confirmed at runtime: the script crashed{where} with {error.get('type')}: {error.get('message')}", ["training-loop"], {"error": error})
    check = _check(probe, "gradient-flow")
    if check is None or check.get("status") == "skip":
        return None
    ev = check.get("evidence") or {}
    missing = ev.get("no_grad") or []
    if check.get("status") in ("fail", "warn") and missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        return Link(f, CONFIRMED, f"confirmed at runtime: {len(missing)} parameter(s) got no gradient after backward ({shown})", ["gradient-flow"], {"no_gradient": missing})
    if check.get("status") == "pass":
        return Link(f, CONTRADICTED, "the run contradicts it: every trainable parameter received a gradient", ["gradient-flow"], {})
    return Link(f, NOT_OBSERVED, f"gradient-flow: {check.get('summary', '')}", ["gradient-flow"], {})


def _sampler_runs(probe: dict[str, Any]) -> dict[tuple[Any, Any], list[dict[str, Any]]]:
    """Every DistributedSampler's epochs as it started them, per (rank, sampler): from each rank of a distributed
    run, else from the one process."""
    ranks = (probe.get("distributed") or {}).get("ranks")
    sources = [(r.get("rank"), r.get("samplers") or []) for r in ranks] if ranks else [(None, probe.get("samplers") or [])]
    out: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for rank, events in sources:
        for ev in events:
            out.setdefault((rank, ev.get("index")), []).append(ev)
    return out


@linker("sampler-missing-set-epoch")
def _sampler_epoch(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    runs = _sampler_runs(probe)
    if not runs:
        if _trained(probe):
            return Link(f, NOT_OBSERVED, "no DistributedSampler was iterated in the probed steps", ["data-sharding"], {})
        return None
    stuck = {k: v for k, v in runs.items() if len(v) >= 2 and v[0].get("shuffle") and len({e.get("epoch") for e in v}) == 1}
    moved = {k: v for k, v in runs.items() if len({e.get("epoch") for e in v}) > 1}
    evidence = {"samplers": [{"rank": k[0], "epochs": [e.get("epoch") for e in v]} for k, v in runs.items()]}
    if stuck:
        (rank, _), evs = next(iter(stuck.items()))
        who = f" on rank {rank}" if rank is not None else ""
        return Link(f, CONFIRMED, f"confirmed at runtime (data-sharding): the {evs[0].get('cls')} started {len(evs)} epochs "
                    f"with epoch={evs[0].get('epoch')} each time{who}, so every epoch repeats one order", ["data-sharding"], evidence)
    if moved and len({k[1] for k in runs}) == 1:
        evs = next(iter(moved.values()))
        return Link(f, CONTRADICTED, "the run contradicts it: the sampler's epoch changed between epochs "
                    f"({' -> '.join(str(e.get('epoch')) for e in evs)}), so set_epoch() is called somewhere the static "
                    "analysis did not see", ["data-sharding"], evidence)
    return Link(f, NOT_OBSERVED, "the probed steps held one epoch of the sampler: probe more --steps (or a shorter "
                "epoch) to see whether the next one reshuffles", ["data-sharding"], evidence)


@linker("train-loader-not-shuffled")
def _unsharded_loader(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    """Distributed runs only: a loader without a sampler gives every rank the same batches."""
    check = _check(probe, "data-sharding")
    if check is None or check.get("status") != "fail" or "no DistributedSampler" not in str(check.get("summary", "")):
        return None
    return Link(f, CONFIRMED, f"confirmed at runtime (data-sharding): {check.get('summary')}", ["data-sharding"],
                check.get("evidence") or {})


@linker("missing-seed")
def _unseeded_ranks(f: Finding, probe: dict[str, Any]) -> Optional[Link]:
    """Distributed runs only: unseeded ranks without a DDP broadcast start from different weights."""
    check = _check(probe, "rank-sync")
    ev = (check or {}).get("evidence") or {}
    init = ev.get("init_rel_diff")
    if check is None or init is None or init <= ev.get("tolerance", 0.0):
        return None
    return Link(f, CONFIRMED, f"confirmed at runtime (rank-sync): the ranks started from different weights (their "
                f"norms differ by up to {init:.2%} before the first update)", ["rank-sync"], ev)


def link_findings(findings: list[Finding], probe: dict[str, Any]) -> list[Link]:
    """Links for the findings whose rule has runtime evidence in ``probe`` (the probe's JSON payload)."""
    out = []
    for f in findings:
        fn = _LINKERS.get(f.rule)
        if fn is None:
            continue
        link = fn(f, probe)
        if link is not None:
            out.append(link)
    return out


def source_context(f: Finding, radius: int = 2) -> list[dict[str, Any]]:
    """The finding's lines with a little context, for the HTML report."""
    try:
        with open(f.path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    lo, hi = max(1, f.line - radius), min(len(lines), f.end_line + radius)
    return [{"line": i, "text": lines[i - 1], "hit": f.line <= i <= f.end_line} for i in range(lo, hi + 1)]


def merged_payload(findings: list[Finding], probe: dict[str, Any], errors: list[tuple[str, str]]) -> dict[str, Any]:
    """The merged JSON report: the static contract (``findings``) + the probe contract + ``links``."""
    links = link_findings(findings, probe)
    by_key = {(l.finding.path, l.finding.line, l.finding.rule): l for l in links}
    static = []
    for f in findings:
        d = f.to_dict()
        link = by_key.get((f.path, f.line, f.rule))
        if link is not None:
            d["runtime"] = {"verdict": link.verdict, "summary": link.summary, "evidence": link.evidence, "checks": link.checks}
        d["source"] = source_context(f)
        static.append(d)
    payload = dict(probe)
    # One finding type: static findings (with their runtime verdict) and the probe's own source-pointing
    # findings side by side, told apart by `origin`.
    payload["findings"] = static + list(probe.get("findings", []))
    payload["static_errors"] = [{"path": p, "message": m} for p, m in errors]
    payload["links"] = [l.to_dict() for l in links]
    return payload


def display(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def render_merged(
    script: str, result: Any, findings: list[Finding], errors: list[tuple[str, str]], fmt: str, *, colour: bool
) -> tuple[str, bool]:
    """The merged report in ``fmt`` (text, json, html) of a probe result and the static ``findings`` (and
    ``errors``) on the script; also whether a static error-severity finding exists."""
    import json

    from doctor.lint.engine import failing
    from doctor.core.findings import Severity

    payload = merged_payload(findings, result.to_dict(), errors)
    failed = failing(findings, Severity.ERROR)
    if fmt == "json":
        return json.dumps(payload, indent=2, allow_nan=False), failed
    if fmt == "html":
        from doctor.report.html import render_html

        return render_html(payload), failed
    from doctor.report.probe import render_text as probe_text
    from doctor.report.lint import location

    import click

    def style(t: str, **kw: Any) -> str:
        return click.style(t, **kw) if colour else t

    lines = [style(f"Static findings on {display(script)} and its local modules: {len(findings)}", bold=True)]
    by_key = {(l["path"], l["line"], l["rule"]): l for l in payload["links"]}
    for f in findings:
        lines.append(f"{location(f)}: {style(f.code, bold=True)} {f.message} [{f.rule}]")
        link = by_key.get((f.path, f.line, f.rule))
        if link is not None:
            colour_of = {CONFIRMED: "red", CONTRADICTED: "green", NOT_OBSERVED: "white"}[link["verdict"]]
            lines.append("    " + style(f"runtime: {link['summary']}", fg=colour_of))
    for path, message in errors:
        lines.append(f"{path}: error: {message}")
    lines.append("")
    lines.append(probe_text(result, colour=colour))
    return "\n".join(lines), failed
