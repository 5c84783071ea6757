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
#: Distributed mode: elements of a batch (or model input) tensor read for its fingerprint, and tensors per batch.
#: Identical batches give identical fingerprints; different ones differ in a strided subset this size.
FINGERPRINT_ELEMENTS = 65536
FINGERPRINT_TENSORS = 4


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
    #: Where the backward passes of the step came from: distinct call sites, and calls from the busiest one
    #: (an accumulation loop calls backward() k times from one line; a GAN's two losses come from two lines).
    backward_sites: Optional[int] = None
    backwards_per_site: Optional[int] = None
    #: Per backward pass (first few): the tensor reaching backward() over the criterion outputs since the last one.
    backward_ratio: list[float] = field(default_factory=list)
    #: Global gradient norm of the primary optimizer's parameters just before / after each backward pass.
    grad_before_backward: list[Optional[float]] = field(default_factory=list)
    grad_after_backward: list[Optional[float]] = field(default_factory=list)
    #: Gradient norms above were read before clip_grad_norm_/clip_grad_value_ clipped them.
    grad_norm_before_clip: bool = False
    clip: dict[str, Any] = field(default_factory=dict)
    #: First output of each criterion kind in the step (mean over elements for reduction='none').
    criterion: dict[str, float] = field(default_factory=dict)
    #: What each logits/log-prob loss received: min, max, row sums, row logsumexp.
    loss_inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    closure_evaluations: Optional[int] = None
    #: Distributed mode, sampled steps: per parameter of the primary optimizer its [L2, L1] norm after the step
    #: (``param_fp``) and, at step 0, before the first update (``param_fp_init``); [sum, sum of squares, size] per
    #: tensor of the step's first DataLoader batch (``batch_fp``) and of the first model call's inputs (``input_fp``).
    param_fp: dict[str, list[float]] = field(default_factory=dict)
    param_fp_init: dict[str, list[float]] = field(default_factory=dict)
    batch_fp: Optional[list[float]] = None
    input_fp: Optional[list[float]] = None

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> "StepRecord":
        known = {k: v for k, v in ev.items() if k in cls.__dataclass_fields__}
        known.setdefault("sampled", False)
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
    #: The bias of a layer whose output goes straight into batch norm: its gradient is ~0 by construction.
    before_norm: bool = False


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
    #: The options this run was made with (``ProbeOptions.to_dict()``), and its mode.
    options: dict[str, Any] = field(default_factory=dict)
    #: Criterion calls of the first step (kind, reduction, value, element count, ...): what initial-loss judges.
    loss_terms: list[dict[str, Any]] = field(default_factory=list)
    #: Scheduler steps as observed (first three of each scheduler), with the optimizer's step count at the time.
    scheduler_steps: list[dict[str, Any]] = field(default_factory=list)
    #: End-of-run summary from the child: parameters with a gradient no optimizer holds, target counts...
    summary: dict[str, Any] = field(default_factory=dict)
    #: The script updates weights by hand (no torch.optim step): steps are backward passes that changed them.
    manual_updates: bool = False
    #: A torch.compile'd module was called (statistics inside the compiled region are not collected).
    compiled: bool = False
    #: Top-level models (name in the script, class).
    models: list[dict[str, Any]] = field(default_factory=list)
    #: Results of the in-run recipe experiments, by name.
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: LR range test: the sweep's bounds and the script's own LR; where it stopped.
    lr_range: dict[str, Any] = field(default_factory=dict)
    #: The recipe runs of their own (overfit-batch, lr-range), by name: each a full ProbeRun.
    recipe_runs: dict[str, "ProbeRun"] = field(default_factory=dict)
    #: Each DistributedSampler iteration (an epoch): the sampler's epoch, shuffle flag, num_replicas, rank.
    samplers: list[dict[str, Any]] = field(default_factory=list)
    #: Distributed mode, one rank's run: who it is (``rank``, ``local_rank``, ``world_size``, ``pid``...) and what it
    #: saw of the job at its first step (``dist``: backend, DDP wrapper and its ranks, sharded parameters).
    rank_info: dict[str, Any] = field(default_factory=dict)
    dist: dict[str, Any] = field(default_factory=dict)
    #: Distributed mode, the merged run: every rank's own run, by global rank, and the job (launcher, world size,
    #: which rank failed first and why the others stopped). Empty for a single-process run.
    ranks: dict[int, "ProbeRun"] = field(default_factory=dict)
    distributed: dict[str, Any] = field(default_factory=dict)

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

    @property
    def recipe_requested(self) -> tuple[str, ...]:
        return tuple(self.options.get("recipe") or ())

    @property
    def mode(self) -> str:
        return str(self.options.get("mode") or "normal")

    @property
    def is_distributed(self) -> bool:
        """The merged run of a ``--nproc-per-node`` probe (cross-rank checks apply)."""
        return bool(self.distributed)

    @property
    def rank(self) -> Optional[int]:
        return self.rank_info.get("rank")

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_events(cls, events: list[dict[str, Any]], script: str, args: list[str], steps_requested: int) -> "ProbeRun":
        """Fold the child's events into a run. Status and timing are set by the runner afterwards."""
        run = cls(script=script, args=list(args), steps_requested=steps_requested)
        by_step: dict[int, dict[str, Any]] = {}
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
                run.models = list(ev.get("models") or [])
            elif kind == "manual_updates":
                run.manual_updates = True
            elif kind == "compiled":
                run.compiled = True
            elif kind == "loss_terms":
                run.loss_terms = list(ev.get("terms") or [])
            elif kind == "scheduler_step":
                run.scheduler_steps.append({k: v for k, v in ev.items() if k != "ev"})
            elif kind == "summary":
                run.summary = {k: v for k, v in ev.items() if k != "ev"}
            elif kind == "experiment":
                run.experiments[str(ev.get("name"))] = {k: v for k, v in ev.items() if k not in ("ev", "name")}
            elif kind == "lr_range":
                run.lr_range.update({k: v for k, v in ev.items() if k != "ev"})
            elif kind == "lr_range_stop":
                run.lr_range["stopped_at_step"] = ev.get("step")
                run.lr_range["stopped_loss"] = ev.get("loss")
            elif kind == "loss_info":
                info = {k: v for k, v in ev.items() if k != "ev"}
                run.loss_info.update(info)
                # Every loss kind the script used, each with what its input looked like.
                inputs = run.loss_info.setdefault("inputs", [])
                inputs[:] = [i for i in inputs if i.get("kind") != info.get("kind")] + [dict(info)]
            elif kind == "step" and isinstance(ev.get("step"), int):
                # an unsampled step is sent at once without its loss, and again with it at the next flush
                by_step.setdefault(ev["step"], {}).update(ev)
            elif kind == "warning":
                run.warnings.append({k: v for k, v in ev.items() if k != "ev"})
            elif kind == "other_step":
                run.other_optimizer_steps = int(ev.get("count", 0))
            elif kind == "internal" and len(run.internal_errors) < 20:
                run.internal_errors.append(str(ev.get("error")))
            elif kind == "exit" and ev.get("error"):
                run.error = ScriptError(**ev["error"])
            elif kind == "rank":
                run.rank_info = {k: v for k, v in ev.items() if k != "ev"}
            elif kind == "dist":
                run.dist = {k: v for k, v in ev.items() if k != "ev"}
            elif kind == "sampler":
                run.samplers.append({k: v for k, v in ev.items() if k != "ev"})
        run.steps = [StepRecord.from_event(by_step[k]) for k in sorted(by_step)]
        return run
