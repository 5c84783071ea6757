"""What a probe run observed: the per-step records the child streamed, gathered into one ``ProbeRun``.

The child process writes one JSON object per line (an *event*); ``ProbeRun.from_events`` folds them into
dataclasses. Checks read only a ``ProbeRun``, so they can be tested on synthetic events without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

#: Script outcomes, as the JSON report names them.
COMPLETED, STOPPED, CRASHED, TIMEOUT = "completed", "stopped", "crashed", "timeout"


@dataclass
class StepRecord:
    """One optimizer step of the primary optimizer. Fields other than loss/lr/timing exist on sampled steps."""

    step: int
    sampled: bool
    loss: Optional[float] = None
    lr: list[float] = field(default_factory=list)
    wall_s: Optional[float] = None
    data_wait_s: float = 0.0
    batches: int = 0
    grad_norm: Optional[float] = None
    param_grad_norms: dict[str, float] = field(default_factory=dict)
    none_grads: list[str] = field(default_factory=list)
    update_ratio: list[Optional[float]] = field(default_factory=list)
    param_update_ratio: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    batch_size: Optional[int] = None
    backwards: int = 0
    loss_scaled: bool = False
    first_backward_grad_norm: Optional[float] = None

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> "StepRecord":
        known = {k: v for k, v in ev.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class ParamInfo:
    """A parameter of the primary optimizer (or of the model), named by its module path."""

    name: str
    shape: list[int]
    numel: int
    requires_grad: bool
    in_optimizer: bool
    group: Optional[int]


@dataclass
class ScriptError:
    """Why the script ended abnormally, and where (the deepest frame in the user's script)."""

    type: str
    message: str
    path: Optional[str] = None
    line: Optional[int] = None
    oom: bool = False
    traceback: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "oom": self.oom,
            "traceback": self.traceback,
        }


@dataclass
class ProbeRun:
    """Everything the parent learned about one run of the user's script."""

    script: str
    args: list[str]
    steps_requested: int
    status: str = CRASHED
    exit_code: Optional[int] = None
    error: Optional[ScriptError] = None
    wall_seconds: float = 0.0
    startup_seconds: Optional[float] = None
    steps: list[StepRecord] = field(default_factory=list)
    params: list[ParamInfo] = field(default_factory=list)
    loss_info: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    output_tail: list[str] = field(default_factory=list)
    optimizers: int = 0
    other_optimizer_steps: int = 0
    #: Errors inside the probe's own hooks (swallowed so the script runs on): shown to debug the probe.
    internal_errors: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------------
    @property
    def steps_observed(self) -> int:
        return len(self.steps)

    @property
    def losses(self) -> list[Optional[float]]:
        return [s.loss for s in self.steps]

    def first_nonfinite_step(self) -> Optional[int]:
        """Index of the first step whose loss is NaN or infinite, if any."""
        for i, s in enumerate(self.steps):
            if s.loss is not None and not math.isfinite(s.loss):
                return i
        return None

    def healthy_steps(self) -> list[StepRecord]:
        """Steps before the first non-finite loss: once the loss is NaN every statistic is NaN too, and
        that single root cause is reported by ``non-finite-loss``, not again by every other check."""
        cut = self.first_nonfinite_step()
        return self.steps if cut is None else self.steps[:cut]

    def sampled_steps(self) -> list[StepRecord]:
        return [s for s in self.healthy_steps() if s.sampled]

    @property
    def on_cuda(self) -> bool:
        return self.device.get("type") == "cuda"

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_events(cls, events: list[dict[str, Any]], script: str, args: list[str], steps_requested: int) -> "ProbeRun":
        """Fold the child's events into a run. Status and timing are set by the runner afterwards."""
        run = cls(script=script, args=list(args), steps_requested=steps_requested)
        by_step: dict[int, StepRecord] = {}
        for ev in events:
            kind = ev.get("ev")
            if kind == "start":
                run.device = dict(ev.get("device") or {})
                run.startup_seconds = ev.get("startup_s")
            elif kind == "device":
                run.device.update(ev.get("device") or {})
            elif kind == "params":
                run.params = [ParamInfo(**p) for p in ev.get("params", [])]
                run.optimizers = int(ev.get("optimizers", 1))
            elif kind == "loss_info":
                info = {k: v for k, v in ev.items() if k != "ev"}
                run.loss_info.update(info)
                # Every loss kind the script used, each with what its input looked like.
                inputs = run.loss_info.setdefault("inputs", [])
                inputs[:] = [i for i in inputs if i.get("kind") != info.get("kind")] + [dict(info)]
            elif kind == "step":
                rec = StepRecord.from_event(ev)
                by_step[rec.step] = rec
            elif kind == "warning":
                run.warnings.append({k: v for k, v in ev.items() if k != "ev"})
            elif kind == "other_step":
                run.other_optimizer_steps = int(ev.get("count", 0))
            elif kind == "internal" and len(run.internal_errors) < 20:
                run.internal_errors.append(str(ev.get("error")))
            elif kind == "exit" and ev.get("error"):
                run.error = ScriptError(**ev["error"])
        run.steps = [by_step[k] for k in sorted(by_step)]
        return run
