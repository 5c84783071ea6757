"""Instrumentation installed in the child before the user's script runs, through PyTorch's global hooks.

Cost model (why the code looks the way it does):
- Every optimizer step runs two cheap Python hooks: a step counter, the LR, host timers, and a
  detached reference to the loss. No host-device sync; the step's record (without the loss value) is
  written to the event stream at once, so a hard kill loses no step.
- On *sampled* steps (0, 1, 2 and every ``sample_every``-th) the module forward hooks are registered,
  gradient norms come from one ``torch._foreach_norm`` (before ``clip_grad_norm_`` when the script clips),
  the update ‖Δw‖/‖w‖ from one parameter copy, and all numbers of the step (plus the losses of the
  unsampled steps before it) reach the host in a single ``tolist()`` per device. Activation statistics use
  strided subsets of at most ``SAMPLE_ELEMENTS``. Each ``backward()`` of a sampled step also records where
  it was called from, how the tensor it received relates to the criterion's output, and the gradient norm
  before and after it (at most ``WINDOW_BACKWARDS`` per step).
- Forward hooks are removed again after a sampled step, so unsampled steps pay nothing for them. Inside a
  ``torch.compile``d region the hooks do nothing (dynamo traces them as no-ops); once a compiled module is
  seen they stay installed, so that toggling them does not invalidate the compiled graph.
- Scripts that update weights by hand (``p.data.add_(...)`` after ``backward()``) are found by comparing
  parameter norms between the first backward passes; from then on each ``backward()`` closes a step.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
import weakref
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.optim import optimizer as optim_mod
from torch.nn.modules import module as module_mod

from doctor.probe.experiments import clone_args, first_tensor, run as run_experiments
from doctor.probe.options import LR_RANGE, OVERFIT, ProbeOptions
from doctor.probe.stream import Emitter
from doctor.probe.trace import FINGERPRINT_ELEMENTS, FINGERPRINT_TENSORS

#: Elements per tensor read for activation/output statistics: enough for stable fractions, small enough to be free.
SAMPLE_ELEMENTS = 4096
#: Rows per batch used to decide whether a unit ever fires (a unit that fires in 1 of 256 rows is alive).
UNIT_ROWS = 256
#: Rows of the model output used for diversity and the predicted-class histogram.
OUTPUT_ROWS = 256
#: Backward passes per sampled step whose gradient norms and loss ratio are recorded (accumulation windows
#: of 32 micro-steps would otherwise pay 32 norms).
WINDOW_BACKWARDS = 4
#: Criterion calls of the first step recorded for initial-loss (a GAN or a multi-task loss has a few).
FIRST_TERMS = 8
#: Backward passes inspected for hand-written updates before giving up (accumulation windows are long).
MANUAL_PROBE_BACKWARDS = 64
#: An LR range run stops once the loss exceeds this many times its best value and is back above its first
#: value (or is not finite): the sweep has diverged.
LR_RANGE_DIVERGED = 4.0

#: Iterations of each DistributedSampler recorded (its epoch at each): enough to see whether it changes.
SAMPLER_ITERATIONS = 8

#: What a CUDA context takes outside PyTorch's allocator (driver, cuBLAS/cuDNN workspaces): roughly 0.5 GiB.
CUDA_CONTEXT_BYTES = 512 * 2**20

RELU_FAMILY = (torch.nn.ReLU, torch.nn.ReLU6)
SATURATING = (torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.Hardtanh)

#: Functional losses that are wrapped, and the kind the checks understand.
LOSS_FUNCTIONS = {
    "cross_entropy": "cross_entropy",
    "nll_loss": "nll",
    "binary_cross_entropy": "bce",
    "binary_cross_entropy_with_logits": "bce_logits",
    "mse_loss": "mse",
    "l1_loss": "l1",
    "smooth_l1_loss": "smooth_l1",
    "huber_loss": "huber",
    "kl_div": "kl_div",
}
#: Positional index of ``reduction`` in each functional loss's signature (after input, target).
REDUCTION_POS = {"cross_entropy": 6, "nll": 6, "bce": 5, "bce_logits": 5, "mse": 4, "l1": 4, "smooth_l1": 4,
                 "huber": 2, "kl_div": 4}

_TORCH_DIR = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
_DOCTOR_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep
_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


class ProbeStop(BaseException):
    """Raised from a hook once enough steps were observed. A BaseException so ``except Exception`` lets it pass."""


def user_site(script_path: str, frames: Optional[list] = None) -> Optional[tuple[str, int]]:
    """The deepest frame that lies in the user's script: the line to point a finding at."""
    frames = frames if frames is not None else traceback.extract_stack()
    for fr in reversed(frames):
        if os.path.realpath(fr.filename) == script_path:
            return fr.filename, fr.lineno or 0
    return None


def caller_site(skip: int = 2) -> tuple[str, int]:
    """File and line of the innermost frame outside torch and doctor: where the user's code called in."""
    frame = sys._getframe(skip)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_TORCH_DIR) or name.startswith(_DOCTOR_DIR) or name.startswith("<")):
            return name, frame.f_lineno
        frame = frame.f_back
    return "?", 0


class _Pending:
    """Scalars produced on the device, read back to the host together (one sync per device)."""

    def __init__(self) -> None:
        self.items: list[tuple[torch.Tensor, Callable[[list[float]], None]]] = []

    def add(self, tensor: torch.Tensor, setter: Callable[[list[float]], None]) -> None:
        self.items.append((tensor, setter))  # converted at resolve: unsampled steps stay as cheap as possible

    def resolve(self) -> None:
        items, self.items = self.items, []
        by_device: dict[torch.device, list] = {}
        for t, setter in items:
            t = t.detach().reshape(-1).float()
            by_device.setdefault(t.device, []).append((t, setter))
        for group in by_device.values():
            flat = torch.cat([t for t, _ in group]).tolist() if group else []
            pos = 0
            for t, setter in group:
                n = t.numel()
                setter(flat[pos : pos + n])
                pos += n


class Probe:
    """All hooks of one child process. ``install()`` before the script, ``finish()`` after it."""

    def __init__(self, emitter: Emitter, script_path: str, options: Optional[ProbeOptions] = None) -> None:
        options = options or ProbeOptions()
        self.options = options
        self.emitter = emitter
        self.script_path = os.path.realpath(script_path)
        self.mode = options.mode
        self.max_steps = options.steps
        # Recipe runs are short diagnostics: every step is a sampled step.
        self.sample_every = 1 if self.mode in (OVERFIT, LR_RANGE) else max(1, options.sample_every)
        self.pending = _Pending()
        self.step = 0
        self.done = False
        self.primary: Optional[weakref.ref] = None
        self.other_steps = 0
        self.opt_steps: dict[int, int] = {}
        self.held: dict[int, set[int]] = {}  # optimizer id -> ids of the parameters it holds
        self.held_sizes: dict[int, int] = {}
        self.sampling = True  # step 0 is always sampled
        self.handles: list[Any] = []
        self.global_handles: list[Any] = []
        self.originals: list[tuple[Any, str, Any]] = []
        self.depth = 0
        self.top_models: dict[int, Any] = {}
        self.names: dict[int, str] = {}
        self.params_sent = False
        self.loss_info_sent: set[str] = set()
        self.in_backward = 0
        self.in_step = False
        self.closure_step = False
        self.closure_losses = 0
        self.experimenting = False
        self.compiled_seen = False
        #: Backward passes since the last optimizer step (micro-steps of an accumulation window), whether
        #: a GradScaler scaled this window's losses, the call sites of those backward passes.
        self.backwards = 0
        self.window_scaled = False
        self.scaler_seen = False
        self.sites: dict[tuple[str, int], int] = {}
        self.scaled: dict[int, torch.Tensor] = {}
        self.loss_acc: Optional[torch.Tensor] = None
        self.loss_count = 0
        self.last_fn_loss: Optional[torch.Tensor] = None
        self.fn_losses: list[torch.Tensor] = []  # criterion outputs since the last backward
        self.window_kinds: set[str] = set()
        self.window_targets = False
        self.window_loss_calls = 0
        self.terms: list[dict[str, Any]] = []
        self.terms_sent = False
        self.label_counts: Optional[torch.Tensor] = None
        self.binary_counts: Optional[torch.Tensor] = None
        self.data_wait = 0.0
        self.batches = 0
        self.t_last = time.perf_counter()
        self.records: dict[int, dict[str, Any]] = {}
        self.unsent: list[int] = []
        self.dead: dict[str, torch.Tensor] = {}
        self.act_types: dict[str, str] = {}
        self.module_names: dict[int, str] = {}
        self.output_seen = False
        self.batch_size: Optional[int] = None
        self.prev_params: Optional[list[torch.Tensor]] = None
        self.preclip: Optional[tuple[list[int], torch.Tensor]] = None
        self.unheld: dict[int, Any] = {}
        self.sched_depth = 0
        self.sched_counts: dict[int, int] = {}
        # hand-written updates
        self.manual = False
        self.manual_params: list[Any] = []
        self.manual_fp: Optional[list[float]] = None
        self.manual_probes = 0
        self.manual_backwards = 0
        # recipe state
        self.first_call: Optional[tuple[Any, tuple]] = None
        self.experiments_done = not options.experiments
        self.overfit_args: list[tuple[int, tuple]] = []
        self.overfit_targets: list[tuple[str, Any]] = []
        self.overfit_replaced = 0
        self.window_calls = 0
        self.lr_base: Optional[list[list[float]]] = None
        self.lr_best: Optional[float] = None
        self.lr_first: Optional[float] = None
        self.cuda = False
        self.nvml: Any = None
        # distributed mode (one child per rank under torchrun): fingerprints on sampled steps, for cross-rank checks
        self.cross_rank = options.distributed
        self.batch_fp_step = -1
        self.input_fp_step = -1
        self.sharded = ""
        self.samplers: "weakref.WeakKeyDictionary[Any, list[int]]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> None:
        self.global_handles.append(optim_mod.register_optimizer_step_pre_hook(self._step_pre))
        self.global_handles.append(optim_mod.register_optimizer_step_post_hook(self._step_post))
        for fname, kind in LOSS_FUNCTIONS.items():
            if hasattr(F, fname):
                self._patch(F, fname, self._wrap_loss(getattr(F, fname), kind))
        self._patch(torch.autograd, "backward", self._wrap_backward(torch.autograd.backward))
        try:
            from torch.amp.grad_scaler import GradScaler

            self._patch(GradScaler, "scale", self._wrap_scale(GradScaler.scale))
        except ImportError:  # older torch: the loss is then read from the functional loss
            pass
        from torch.nn.utils import clip_grad

        for owner in (torch.nn.utils, clip_grad):
            if hasattr(owner, "clip_grad_norm_"):
                self._patch(owner, "clip_grad_norm_", self._wrap_clip(getattr(owner, "clip_grad_norm_"), "norm"))
            if hasattr(owner, "clip_grad_value_"):
                self._patch(owner, "clip_grad_value_", self._wrap_clip(getattr(owner, "clip_grad_value_"), "value"))
        from torch.optim import lr_scheduler

        base = getattr(lr_scheduler, "LRScheduler", None) or getattr(lr_scheduler, "_LRScheduler", None)
        if base is not None:
            self._patch(base, "step", self._wrap_sched_step(base.step))
        from torch.utils.data import dataloader

        self._patch(dataloader._BaseDataLoaderIter, "__next__", self._wrap_next(dataloader._BaseDataLoaderIter.__next__))
        try:
            from torch.utils.data.distributed import DistributedSampler

            self._patch(DistributedSampler, "__iter__", self._wrap_sampler_iter(DistributedSampler.__iter__))
        except ImportError:
            pass
        self._set_forward_hooks(True)

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        self.originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def uninstall(self) -> None:
        self._set_forward_hooks(False, force=True)
        for h in self.global_handles:
            h.remove()
        self.global_handles.clear()
        for owner, name, orig in reversed(self.originals):
            setattr(owner, name, orig)
        self.originals.clear()

    def _wants_forward_hooks(self) -> bool:
        return self.sampling or self.mode == OVERFIT or self.compiled_seen or not self.experiments_done

    def _set_forward_hooks(self, on: bool, force: bool = False) -> None:
        if on and not self.handles:
            self.depth = 0
            self.output_seen = False
            self.handles.append(module_mod.register_module_forward_pre_hook(self._fwd_pre))
            try:
                self.handles.append(module_mod.register_module_forward_hook(self._fwd_post, always_call=True))
            except TypeError:  # torch < 2.1 has no always_call
                self.handles.append(module_mod.register_module_forward_hook(self._fwd_post))
        elif not on and (force or not self.compiled_seen):
            for h in self.handles:
                h.remove()
            self.handles.clear()

    # ------------------------------------------------------------------ wrappers
    def _wrap_loss(self, fn: Callable, kind: str) -> Callable:
        probe = self

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if probe.mode == OVERFIT and not probe.experimenting and torch.is_grad_enabled():
                args, kwargs = probe._overfit_target(kind, args, kwargs)
            out = fn(*args, **kwargs)
            if probe.done:
                raise ProbeStop()
            if probe.experimenting:
                return out
            try:
                if isinstance(out, torch.Tensor) and out.dim() == 0:
                    probe.last_fn_loss = out.detach()
                if probe.sampling or kind not in probe.loss_info_sent:  # unsampled steps: nothing more to record
                    inp = args[0] if args else kwargs.get("input")
                    tgt = args[1] if len(args) > 1 else kwargs.get("target")
                    if isinstance(inp, torch.Tensor) and inp.requires_grad and isinstance(out, torch.Tensor):
                        probe._criterion(kind, out, inp, tgt, args, kwargs)
            except ProbeStop:
                raise
            except Exception as exc:  # instrumentation must never break the user's run
                probe._internal(exc)
            return out

        wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapped.__name__ = getattr(fn, "__name__", "loss")
        wrapped.__doc__ = fn.__doc__
        return wrapped

    def _wrap_backward(self, fn: Callable) -> Callable:
        probe = self

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if probe.done:
                raise ProbeStop()
            outermost = probe.in_backward == 0 and not probe.experimenting
            if outermost:
                try:
                    probe._before_backward(tensors)
                except ProbeStop:
                    raise
                except Exception as exc:  # instrumentation must never break the user's run
                    probe._internal(exc)
            probe.in_backward += 1
            try:
                out = fn(tensors, *args, **kwargs)
            finally:
                probe.in_backward -= 1
            if outermost:
                try:
                    probe._after_backward()
                except Exception as exc:  # instrumentation must never break the user's run
                    probe._internal(exc)
            return out

        backward.__wrapped__ = fn  # type: ignore[attr-defined]
        return backward

    def _wrap_scale(self, fn: Callable) -> Callable:
        probe = self

        def scale(scaler: Any, outputs: Any) -> Any:
            out = fn(scaler, outputs)
            if isinstance(out, torch.Tensor) and isinstance(outputs, torch.Tensor) and outputs.dim() == 0:
                probe.scaled = {id(out): outputs.detach()}  # keep one: the scaled loss of this micro-batch
                if getattr(scaler, "_enabled", True):  # GradScaler(enabled=False).scale() returns the loss unchanged
                    probe.window_scaled = probe.scaler_seen = True
            return out

        return scale

    def _wrap_clip(self, fn: Callable, kind: str) -> Callable:
        probe = self

        def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(parameters, torch.Tensor):
                parameters = [parameters]
            else:
                parameters = list(parameters)  # a generator can be read once: read it here and pass the list on
            measure = probe.sampling and not probe.experimenting and not probe.done
            if measure:
                try:
                    probe._before_clip(parameters)
                except Exception as exc:  # instrumentation must never break the user's run
                    probe._internal(exc)
            out = fn(parameters, *args, **kwargs)
            if measure:
                try:
                    limit = args[0] if args else kwargs.get("max_norm", kwargs.get("clip_value"))
                    rec = probe.records.setdefault(probe.step, {})
                    info = rec.setdefault("clip", {"kind": kind, "limit": _float(limit), "calls": 0})
                    info["calls"] += 1
                    if kind == "norm" and isinstance(out, torch.Tensor) and info["calls"] == 1:
                        probe.pending.add(out.detach().float().reshape(1), lambda v, info=info: info.__setitem__("total_norm", v[0]))
                except Exception as exc:
                    probe._internal(exc)
            return out

        clip.__wrapped__ = fn  # type: ignore[attr-defined]
        clip.__name__ = getattr(fn, "__name__", "clip")
        return clip

    def _wrap_sched_step(self, fn: Callable) -> Callable:
        probe = self

        def step(sched: Any, *args: Any, **kwargs: Any) -> Any:
            # the constructor's own first step, and schedulers stepped by a SequentialLR/ChainedScheduler, are not the script's
            initial = getattr(sched, "_step_count", 1) == 0
            if probe.sched_depth or initial or probe.experimenting:
                probe.sched_depth += 1
                try:
                    return fn(sched, *args, **kwargs)
                finally:
                    probe.sched_depth -= 1
            opt = getattr(sched, "optimizer", None)
            before = [_float(g.get("lr")) for g in getattr(opt, "param_groups", [])]
            probe.sched_depth += 1
            try:
                out = fn(sched, *args, **kwargs)
            finally:
                probe.sched_depth -= 1
            try:
                probe._scheduler_stepped(sched, opt, before)
            except Exception as exc:  # instrumentation must never break the user's run
                probe._internal(exc)
            return out

        step.__wrapped__ = fn  # type: ignore[attr-defined]
        return step

    def _wrap_next(self, fn: Callable) -> Callable:
        probe = self

        def __next__(it: Any) -> Any:
            t0 = time.perf_counter()
            try:
                batch = fn(it)
            finally:
                probe.data_wait += time.perf_counter() - t0
                probe.batches += 1
            if probe.cross_rank and probe.sampling and probe.batch_fp_step != probe.step and not probe.experimenting:
                probe.batch_fp_step = probe.step  # the step's first batch
                try:
                    probe._fingerprint_into(batch, "batch_fp")
                except Exception as exc:  # instrumentation must never break the user's run
                    probe._internal(exc)
            return batch

        return __next__

    def _wrap_sampler_iter(self, fn: Callable) -> Callable:
        probe = self

        def __iter__(sampler: Any) -> Any:
            try:
                probe._sampler_iterated(sampler)
            except Exception as exc:  # instrumentation must never break the user's run
                probe._internal(exc)
            return fn(sampler)

        __iter__.__wrapped__ = fn  # type: ignore[attr-defined]
        return __iter__

    # ------------------------------------------------------------------ distributed: what the cross-rank checks compare
    def _sampler_iterated(self, sampler: Any) -> None:
        """A DistributedSampler starts an epoch: its epoch (set_epoch), shuffle flag and place in the job."""
        seen = self.samplers.get(sampler)
        if seen is None:
            seen = self.samplers[sampler] = [len(self.samplers), 0]
        seen[1] += 1
        if seen[1] > SAMPLER_ITERATIONS:
            return
        self.emitter.emit("sampler", index=seen[0], iteration=seen[1], cls=type(sampler).__name__,
                          epoch=_int(getattr(sampler, "epoch", None)), shuffle=bool(getattr(sampler, "shuffle", True)),
                          num_replicas=_int(getattr(sampler, "num_replicas", None)), rank=_int(getattr(sampler, "rank", None)),
                          seed=_int(getattr(sampler, "seed", None)), samples=_int(getattr(sampler, "num_samples", None)),
                          step=self.step)

    def _fingerprint_into(self, value: Any, key: str) -> None:
        """Sum and sum of squares of a strided subset of each tensor in ``value`` (a batch: tensors, tuples,
        lists, dicts), reduced where the tensor lives and read back with the step's flush."""
        leaves = _tensor_leaves(value, FINGERPRINT_TENSORS)
        if not leaves:
            return
        parts = []
        for t in leaves:
            flat = _local(t.detach()).reshape(-1)
            if flat.numel() == 0:
                continue
            sub = flat[:: max(1, flat.numel() // FINGERPRINT_ELEMENTS)][:FINGERPRINT_ELEMENTS]
            sub = sub.double() if sub.device.type in ("cpu", "cuda") else sub.float()
            parts.append(torch.stack([sub.sum(), sub.pow(2).sum(), sub.new_full((), float(flat.numel()))]).float())
        if not parts:
            return
        rec = self.records.setdefault(self.step, {})
        # per device: a batch still on the CPU is read without touching the GPU
        for i, part in enumerate(parts):
            self.pending.add(part, lambda v, rec=rec, i=i, n=len(parts): _put_fp(rec, key, i, n, v))

    def _param_fingerprint(self, params: list[Any], rec: dict, key: str) -> None:
        """Per parameter of the primary optimizer: its L2 and L1 norms (two fused kernels), read back with the step's
        flush. Equal on every rank of a data-parallel job after each step; no collective, only the parent compares."""
        tensors = [_local(p.detach()) for p in params]
        if not tensors or self.sharded:
            return
        names = [self.names.get(id(p), "?") for p in params]

        def setter(v: list[float]) -> None:
            n = len(names)
            rec[key] = {nm: [a, b] for nm, a, b in zip(names, v[:n], v[n:])}

        self.pending.add(torch.cat([_stack_norms(tensors), _stack_norms(tensors, 1)]), setter)

    def _dist_info(self, opt: Any) -> None:
        """Once, at the first step: the process group, the data-parallel wrapper and whether parameters are sharded.
        Only local queries (no collective)."""
        info: dict[str, Any] = {"initialized": False}
        dist = getattr(torch, "distributed", None)
        if dist is not None and dist.is_available() and dist.is_initialized():
            info.update(initialized=True, backend=str(dist.get_backend()), rank=dist.get_rank(),
                        world_size=dist.get_world_size())
        tops = [ref() for ref in self.top_models.values()]
        tops = [m for m in tops if m is not None]
        info["wrappers"] = sorted({type(m).__name__ for m in tops})
        ddp = [m for m in tops if isinstance(m, torch.nn.parallel.DistributedDataParallel)]
        info["ddp"] = bool(ddp)
        if ddp and info["initialized"]:
            try:
                info["ddp_ranks"] = [int(r) for r in dist.get_process_group_ranks(ddp[0].process_group)]
            except Exception:
                pass
        params = [p for g in getattr(opt, "param_groups", []) for p in g["params"]] if opt is not None else []
        kinds = {type(p).__name__ for p in params}
        if "DTensor" in kinds:
            self.sharded = "parameters are DTensors (FSDP2 / tensor parallel): each rank holds a shard"
        elif "FlatParameter" in kinds or any(type(m).__name__ == "FullyShardedDataParallel" for m in tops):
            self.sharded = "FullyShardedDataParallel: each rank holds a shard of the flattened parameters"
        elif params and all(p.numel() == 0 for p in params):
            self.sharded = "every parameter is empty on this rank (partitioned, e.g. DeepSpeed ZeRO-3)"
        info["sharded"] = self.sharded
        self.emitter.emit("dist", **info)

    # ------------------------------------------------------------------ backward
    def _before_backward(self, tensors: Any) -> None:
        if self.primary is None:
            self._probe_manual_update()
        loss: Optional[torch.Tensor] = None
        if isinstance(tensors, torch.Tensor) and tensors.dim() == 0:
            loss = self.scaled.pop(id(tensors), None)
            loss = loss if loss is not None else tensors.detach()
        if self.in_step:  # a closure (LBFGS): the optimizer evaluates the loss itself, several times per step
            if self.closure_losses == 0 and loss is not None:
                self._add_loss(loss)
            self.closure_losses += 1
            self.fn_losses = []
            return
        if loss is not None:
            self._add_loss(loss)
        if self.sampling:
            site = caller_site(3)
            self.sites[site] = self.sites.get(site, 0) + 1
        if self.sampling and self.backwards < WINDOW_BACKWARDS:
            rec = self.records.setdefault(self.step, {})
            if loss is not None and self.fn_losses:
                crit = torch.stack([t.float() for t in self.fn_losses]).sum()
                ratio = (loss.float() / crit).reshape(1)
                rec.setdefault("backward_ratio", [])
                self.pending.add(ratio, lambda v, rec=rec: rec["backward_ratio"].append(v[0]))
            opt = self.primary() if self.primary is not None else None
            if opt is not None:
                self._grad_norm_into(opt, rec, "grad_before_backward")
        self.fn_losses = []

    def _after_backward(self) -> None:
        if self.in_step:
            return
        self.backwards += 1
        if self.manual:
            self.manual_backwards += 1
            if self.sampling:
                self._manual_stats()
            return
        if self.sampling and self.backwards <= WINDOW_BACKWARDS:
            opt = self.primary() if self.primary is not None else None
            if opt is not None:
                rec = self.records.setdefault(self.step, {})
                self._grad_norm_into(opt, rec, "grad_after_backward")

    def _grad_norm_into(self, opt: Any, rec: dict, key: str) -> None:
        """Append the global gradient norm of ``opt``'s parameters now to ``rec[key]`` (0 when no grad exists)."""
        grads = [p.grad.detach() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        values = rec.setdefault(key, [])
        if not grads:
            values.append(0.0)
            return
        idx = len(values)
        values.append(None)
        total = _stack_norms(grads).double().pow(2).sum().sqrt().float().reshape(1)
        self.pending.add(total, lambda v, values=values, idx=idx: values.__setitem__(idx, v[0]))

    def _add_loss(self, loss: torch.Tensor) -> None:
        loss = loss.float()
        self.loss_acc = loss if self.loss_acc is None else self.loss_acc + loss
        self.loss_count += 1

    # ------------------------------------------------------------------ hand-written updates
    def _model_params(self) -> list[Any]:
        params, seen = [], set()
        for ref in self.top_models.values():
            top = ref()
            if top is None or not hasattr(top, "parameters"):
                continue
            for p in top.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def _probe_manual_update(self) -> None:
        """Before a backward with no optimizer step yet: did the weights change since the previous backward?
        Then the script updates them by hand, and each backward from now on closes a step."""
        if self.manual:
            if self.manual_backwards:
                self._end_step(None, self.manual_params)
            return
        if self.manual_probes >= MANUAL_PROBE_BACKWARDS or self.experimenting:
            return
        params = self._model_params()
        if not params:
            return
        self.manual_probes += 1
        fp = _stack_norms([p.detach() for p in params]).tolist()
        changed = self.manual_fp is not None and len(fp) == len(self.manual_fp) and fp != self.manual_fp
        self.manual_fp = fp
        if changed:
            self.manual = True
            self.manual_params = params
            self._send_params(None)
            self.emitter.emit("manual_updates", params=len(params))
            if not self.experiments_done:
                self._run_experiments()
            self._end_step(None, params)

    def _manual_stats(self) -> None:
        """Gradient statistics right after backward (the script clears them before the next one) and a copy
        of the weights, to measure the hand-written update at the next backward."""
        params = self.manual_params
        rec = self.records.setdefault(self.step, {})
        self._grad_stats_of(params, rec)
        self.prev_params = torch._foreach_mul([p.detach() for p in params], 1.0) if params else []

    # ------------------------------------------------------------------ loss metadata
    def _criterion(self, kind: str, out: torch.Tensor, inp: torch.Tensor, tgt: Any, args: tuple, kwargs: dict) -> None:
        """A criterion call on the training path (its input carries a gradient)."""
        value = out.detach()
        if value.dim() == 0:
            self.fn_losses.append(value)
        if kind not in self.loss_info_sent:
            self._loss_info(kind, inp, tgt)
        reduction = _reduction(kind, args, kwargs)
        if self.step == 0 and not self.terms_sent and len(self.terms) < FIRST_TERMS and value.numel():
            self._first_term(kind, value, inp, tgt, reduction, kwargs)
        if self.sampling:
            rec = self.records.setdefault(self.step, {})
            if kind not in self.window_kinds:
                self.window_kinds.add(kind)
                mean = value.float().mean().reshape(1)
                self.pending.add(mean, lambda v, rec=rec, kind=kind: rec.setdefault("criterion", {}).__setitem__(kind, v[0]))
                self._input_stats(kind, inp, rec)
            if isinstance(tgt, torch.Tensor) and kind in ("bce", "bce_logits"):
                # every binary call: a GAN's real (1) and fake (0) labels are two calls of one step
                self._target_stats(kind, inp, tgt, kwargs)
            elif not self.window_targets and isinstance(tgt, torch.Tensor) and kind in ("cross_entropy", "nll"):
                self.window_targets = True
                self._target_stats(kind, inp, tgt, kwargs)

    def _loss_info(self, kind: str, inp: torch.Tensor, tgt: Any) -> None:
        self.loss_info_sent.add(kind)
        site = user_site(self.script_path)
        info: dict[str, Any] = {
            "kind": kind,
            "input_shape": list(inp.shape),
            "path": site[0] if site else None,
            "line": site[1] if site else None,
            "primary": len(self.loss_info_sent) == 1,
        }
        if isinstance(tgt, torch.Tensor):
            info["target_shape"] = list(tgt.shape)
            info["target_dtype"] = str(tgt.dtype).replace("torch.", "")
        if kind in ("cross_entropy", "nll"):
            info["classes"] = int(inp.shape[1]) if inp.dim() >= 2 else int(inp.shape[0])
        self.emitter.emit("loss_info", **info)

    def _first_term(self, kind: str, value: torch.Tensor, inp: torch.Tensor, tgt: Any, reduction: str, kwargs: dict) -> None:
        """One criterion term of the first step: its value (mean for reduction='none'), how many elements it
        sums over (for reduction='sum'), and what the expected value at init depends on."""
        term: dict[str, Any] = {"kind": kind, "reduction": reduction, "index": len(self.terms)}
        site = user_site(self.script_path)
        if site:
            term["path"], term["line"] = site
        if kind in ("cross_entropy", "nll"):
            term["classes"] = int(inp.shape[1]) if inp.dim() >= 2 else int(inp.shape[0])
            term["label_smoothing"] = float(kwargs.get("label_smoothing") or 0.0)
        if kind == "bce_logits" and kwargs.get("pos_weight") is not None:
            term["pos_weight"] = True
        parts = [value.float().mean().reshape(1)]
        names = ["value"]
        if isinstance(tgt, torch.Tensor) and tgt.numel():
            if kind in ("cross_entropy", "nll") and not tgt.is_floating_point():
                ignore = kwargs.get("ignore_index", -100)
                parts.append((tgt != ignore).sum().float().reshape(1))
                names.append("count")
            else:
                term["count"] = int(inp.numel()) if kind not in ("cross_entropy", "nll") else int(tgt.numel() // max(1, term.get("classes", 1)))
            if kind in ("bce", "bce_logits", "mse") and tgt.is_floating_point():
                t = tgt.detach().float().reshape(-1)
                tc = t.clamp(1e-7, 1 - 1e-7)
                entropy = -(tc * tc.log() + (1 - tc) * (1 - tc).log()).mean()
                parts += [t.mean().reshape(1), (t.var(unbiased=False) if t.numel() > 1 else t.new_zeros(())).reshape(1),
                          entropy.reshape(1) if kind != "mse" else t.new_zeros(1)]
                names += ["target_mean", "target_var", "target_entropy"]
        else:
            term["count"] = int(inp.numel())
        self.terms.append(term)

        def setter(v: list[float], term: dict = term, names: list = names) -> None:
            for k, x in zip(names, v):
                term[k] = int(x) if k == "count" else x

        self.pending.add(torch.cat(parts), setter)

    def _input_stats(self, kind: str, inp: torch.Tensor, rec: dict) -> None:
        """Range of what the loss receives: probabilities (in [0, 1], rows summing to 1) where logits are
        expected are the runtime trace of a softmax/sigmoid in front of the loss; logits where log-probabilities
        are expected (nll_loss) show as positive values and a row logsumexp far from 0."""
        if kind not in ("cross_entropy", "nll", "bce_logits") or not inp.is_floating_point() or not inp.numel():
            return
        x = inp.detach()[:OUTPUT_ROWS].float()
        nan = x.new_full((), float("nan"))
        if kind != "bce_logits" and x.dim() >= 2 and x.shape[1] >= 2:
            rows = x.sum(1)
            stats = torch.stack([x.min(), x.max(), rows.mean(), (rows - 1).abs().max(), torch.logsumexp(x, 1).abs().max(),
                                 x.new_full((), float(x.numel()))])
        else:
            stats = torch.stack([x.min(), x.max(), nan, nan, nan, x.new_full((), float(x.numel()))])

        def setter(v: list[float], rec: dict = rec, kind: str = kind) -> None:
            d = {"min": v[0], "max": v[1], "elements": int(v[5])}
            if v[2] == v[2]:
                d.update(row_sum=v[2], row_sum_err=v[3], lse_abs_max=v[4])
            rec.setdefault("loss_inputs", {})[kind] = d

        self.pending.add(stats, setter)

    def _target_stats(self, kind: str, inp: Any, tgt: torch.Tensor, kwargs: dict) -> None:
        """Class balance of the targets: per batch (the share of its most frequent label: a model predicting
        one class is only wrong if the labels are not) and over the run (summed on the device)."""
        if not isinstance(inp, torch.Tensor):
            return
        step = self.step
        if kind in ("cross_entropy", "nll"):
            if tgt.dtype.is_floating_point or tgt.dim() == 0 or inp.dim() < 2:
                return
            classes = int(inp.shape[1])
            t = tgt.detach().reshape(-1)[: SAMPLE_ELEMENTS * 4]
            t = torch.where((t >= 0) & (t < classes), t, torch.full_like(t, classes))
            bins = torch.bincount(t, minlength=classes + 1)[:classes]
            self.label_counts = bins if self.label_counts is None or self.label_counts.shape != bins.shape else self.label_counts + bins
            stat = torch.stack([bins.max().float(), bins.sum().float()])

            def setter(v: list[float]) -> None:
                rec = self.records.setdefault(step, {})
                rec.setdefault("output", {})["label_top_frac"] = v[0] / v[1] if v[1] else None

            self.pending.add(stat, setter)
        elif tgt.is_floating_point() and (tgt.dim() <= 1 or (tgt.dim() == 2 and tgt.shape[1] == 1)):
            # one binary label per sample: count positives, and whether the labels are exactly 0/1
            t = tgt.detach().reshape(-1).float()
            hard = ((t == 0) | (t == 1)).all().float()
            counts = torch.stack([(t <= 0.5).sum().float(), (t > 0.5).sum().float(), hard])
            self.binary_counts = counts if self.binary_counts is None else torch.stack(
                [self.binary_counts[0] + counts[0], self.binary_counts[1] + counts[1], torch.minimum(self.binary_counts[2], hard)])

    # ------------------------------------------------------------------ forward hooks
    def _fwd_pre(self, module: Any, args: Any) -> Any:
        if _compiling():
            return None
        self.depth += 1
        if self.experimenting or self.depth != 1 or isinstance(module, torch.nn.modules.loss._Loss):
            return None
        if type(module).__name__ == "OptimizedModule" and not self.compiled_seen:
            self.compiled_seen = True
            self.emitter.emit("compiled", module=type(getattr(module, "_orig_mod", module)).__name__)
        self.top_models.setdefault(id(module), weakref.ref(module))
        if self.batch_size is None and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
            self.batch_size = int(args[0].shape[0])
        if self.cross_rank and self.sampling and self.input_fp_step != self.step and args:
            self.input_fp_step = self.step
            try:
                self._fingerprint_into(args, "input_fp")
            except Exception as exc:  # instrumentation must never break the user's run
                self._internal(exc)
        if not torch.is_grad_enabled():
            return None
        try:
            if self.first_call is None and not self.experiments_done:
                self.first_call = (weakref.ref(module), clone_args(args))
            if self.mode == OVERFIT:
                return self._overfit_args(module, args)
        except Exception as exc:  # instrumentation must never break the user's run
            self._internal(exc)
        return None

    def _fwd_post(self, module: Any, args: Any, output: Any) -> None:
        if _compiling():
            return
        self.depth = max(0, self.depth - 1)
        if self.done or self.experimenting or not self.sampling:
            return
        try:
            if isinstance(module, RELU_FAMILY + SATURATING) and isinstance(output, torch.Tensor):
                self._activation(module, output)
            elif self.depth == 0 and not self.output_seen and not isinstance(module, torch.nn.modules.loss._Loss):
                out = first_tensor(output)
                if out is not None and out.dim() >= 1 and out.is_floating_point():
                    self.output_seen = True
                    self._output_stats(out)
        except Exception as exc:
            self._internal(exc)

    def _module_name(self, module: Any) -> str:
        name = self.module_names.get(id(module))
        if name is None:
            for ref in self.top_models.values():
                top = ref()
                if top is None:
                    continue
                for n, m in top.named_modules():
                    self.module_names.setdefault(id(m), _strip_compiled(n) or type(m).__name__)
            name = self.module_names.setdefault(id(module), f"{type(module).__name__}@{id(module) & 0xFFFF:x}")
        return name

    def _activation(self, module: Any, out: torch.Tensor) -> None:
        name = self._module_name(module)
        x = out.detach()
        if x.dim() < 1 or x.numel() == 0:
            return
        flat = x.reshape(-1)
        stride = max(1, flat.numel() // SAMPLE_ELEMENTS)
        sample = flat[::stride][:SAMPLE_ELEMENTS].float()
        step = self.step
        if isinstance(module, RELU_FAMILY):
            self.act_types[name] = type(module).__name__
            fired = _units_fired(x)
            prev = self.dead.get(name)
            never = ~fired if prev is None or prev.shape != fired.shape else prev & ~fired
            self.dead[name] = never
            # new_full, not torch.tensor(..., device=): a fill kernel instead of a host-to-device copy
            stat = torch.stack([never.sum().float(), never.new_full((), float(never.numel()), dtype=torch.float32),
                                (sample <= 0).float().mean()])

            def set_relu(v: list[float]) -> None:
                acts = self.records.setdefault(step, {}).setdefault("activations", {})
                acts[name] = {"type": self.act_types[name], "dead_units": int(v[0]), "units": int(v[1]), "frac_zero": v[2]}

            self.pending.add(stat, set_relu)
        else:
            if isinstance(module, torch.nn.Sigmoid):
                sat = ((sample < 0.01) | (sample > 0.99)).float().mean()
            else:
                sat = (sample.abs() > 0.99).float().mean()
            typ = type(module).__name__

            def set_sat(v: list[float]) -> None:
                acts = self.records.setdefault(step, {}).setdefault("activations", {})
                acts[name] = {"type": typ, "saturated": v[0]}

            self.pending.add(sat.reshape(1), set_sat)

    def _output_stats(self, out: torch.Tensor) -> None:
        x = out.detach()
        rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(-1, 1)
        rows = rows[:OUTPUT_ROWS].float()
        ncols = rows.shape[1]
        cstride = max(1, (rows.shape[0] * ncols) // SAMPLE_ELEMENTS)
        sub = rows[:, ::cstride]
        spread = sub.std(dim=0, unbiased=False).mean() if sub.shape[0] > 1 else sub.new_zeros(())
        scale = sub.pow(2).mean().sqrt()
        parts = [spread, scale, spread.new_full((), float(rows.shape[0]))]
        classify = x.dim() == 2 and ncols >= 2
        if classify:
            pred = rows.argmax(dim=1)
            counts = torch.bincount(pred, minlength=ncols)
            parts += [counts.max().float(), counts.argmax().float()]
        stat = torch.stack(parts)
        step = self.step

        def setter(v: list[float]) -> None:
            o = self.records.setdefault(step, {}).setdefault("output", {})
            o.update({"row_spread": v[0], "scale": v[1], "rows": int(v[2]), "shape": list(x.shape)})
            if classify:
                o["pred_top_frac"] = v[3] / v[2] if v[2] else None
                o["pred_top_class"] = int(v[4])

        self.pending.add(stat, setter)

    # ------------------------------------------------------------------ optimizer hooks
    def _track_optimizer(self, opt: Any) -> None:
        n = sum(len(g["params"]) for g in opt.param_groups)
        if self.held_sizes.get(id(opt)) != n:
            self.held_sizes[id(opt)] = n
            self.held[id(opt)] = {id(p) for g in opt.param_groups for p in g["params"]}

    def _step_pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self.done:
            raise ProbeStop()
        if self.sampling or id(opt) not in self.held_sizes:  # param groups rarely change: re-read on sampled steps
            try:
                self._track_optimizer(opt)
            except Exception as exc:
                self._internal(exc)
        if self.primary is None:
            self.primary = weakref.ref(opt)
            if self.manual:  # an optimizer after all: it owns the steps from now on
                self.manual = False
            self._send_params(opt)
            if self.cross_rank:
                try:
                    self._dist_info(opt)
                except Exception as exc:
                    self._internal(exc)
        if self.primary() is not opt:
            return
        # the hook gets the step's own arguments, the optimizer first: step(closure) has it second
        closure = args[1] if len(args) > 1 else (kwargs or {}).get("closure")
        self.closure_step = closure is not None
        self.closure_losses = 0
        self.in_step = True
        try:
            if self.mode == LR_RANGE:
                self._lr_sweep(opt)
            if not self.experiments_done:
                self._run_experiments()
            if self.sampling:
                if not self.closure_step:
                    self._grad_stats(opt)
                    self._unheld_grads()
                params = [p for g in opt.param_groups for p in g["params"]]
                self.prev_params = torch._foreach_mul([p.detach() for p in params], 1.0) if params else []
                if self.cross_rank and self.step == 0:  # the weights each rank starts from
                    self._param_fingerprint(params, self.records.setdefault(0, {}), "param_fp_init")
        except ProbeStop:
            raise
        except Exception as exc:
            self._internal(exc)

    def _step_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        self.opt_steps[id(opt)] = self.opt_steps.get(id(opt), 0) + 1
        if self.primary is None or self.primary() is not opt:
            self.other_steps += 1
            return
        self.in_step = False
        if self.closure_step and self.sampling:
            try:
                self._grad_stats(opt)
            except Exception as exc:
                self._internal(exc)
        self._end_step(opt, [p for g in opt.param_groups for p in g["params"]] if self.sampling else [])

    def _end_step(self, opt: Any, params: list[Any]) -> None:
        """Close the current step: its record, the loss, the update; flush on sampled steps; stop at N."""
        now = time.perf_counter()
        step = self.step
        rec = self.records.setdefault(step, {})
        try:
            rec.update(
                step=step,
                sampled=self.sampling,
                lr=[_float(g.get("lr")) for g in opt.param_groups] if opt is not None else [],
                wall_s=now - self.t_last,
                data_wait_s=self.data_wait,
                batches=self.batches,
                batch_size=self.batch_size,
                backwards=self.backwards,
                loss_scaled=self.window_scaled,
            )
            if self.sampling:
                sites = sorted(self.sites.values(), reverse=True)
                rec["backward_sites"] = len(sites)
                rec["backwards_per_site"] = sites[0] if sites else 0
            if self.closure_step:
                rec["closure_evaluations"] = self.closure_losses
            loss = self.loss_acc / self.loss_count if self.loss_acc is not None else self.last_fn_loss
            if loss is not None:
                self.pending.add(loss, lambda v, rec=rec: rec.__setitem__("loss", v[0]))
            if self.cuda:
                rec["memory"] = self._cuda_memory()
            if self.sampling and self.prev_params is not None:
                self._update_ratio(opt, params, rec)
            if self.sampling and self.cross_rank and params:
                self._param_fingerprint(params, rec, "param_fp")
        except Exception as exc:
            self._internal(exc)
        self.unsent.append(step)
        was_sampling = self.sampling
        self.loss_acc, self.loss_count, self.last_fn_loss = None, 0, None
        self.data_wait, self.batches = 0.0, 0
        self.backwards, self.window_scaled = 0, False
        self.sites, self.fn_losses, self.window_kinds, self.window_targets = {}, [], set(), False
        self.preclip, self.closure_step, self.in_step, self.window_calls, self.window_loss_calls = None, False, False, 0, 0
        self.manual_backwards = 0
        self.step += 1
        if self.step >= self.max_steps:
            self.done = True
        self.sampling = not self.done and (self.step < 3 or self.step % self.sample_every == 0)
        if was_sampling or self.done:
            self.flush()
            if self.mode == LR_RANGE:
                self._lr_range_diverged(rec)
        else:
            # Sent now without the loss (it is still on the device): a hard kill loses no step count. The full
            # record follows at the next flush. A hand-built line: this runs on every unsampled step.
            lr = ",".join(repr(x) if x is not None and math.isfinite(x) else "null" for x in rec.get("lr") or [])
            self.emitter.write_line(f'{{"ev":"step","step":{step},"sampled":false,"lr":[{lr}],'
                                    f'"wall_s":{rec.get("wall_s", 0.0)!r},"backwards":{int(rec.get("backwards") or 0)}}}')
        if self._wants_forward_hooks() != bool(self.handles):
            self._set_forward_hooks(self._wants_forward_hooks())
        self.depth = 0
        self.output_seen = False
        self.t_last = time.perf_counter()  # exclude the probe's own flush from the next step's time
        if self.done:
            self.emitter.emit("done", steps=self.step)
            raise ProbeStop()

    def _before_clip(self, parameters: list[Any]) -> None:
        """Gradient norms of the clipped parameters *before* clipping: after it they only show the clip value."""
        ids, grads = [], []
        for p in parameters:
            if isinstance(p, torch.Tensor) and p.grad is not None:
                ids.append(id(p))
                grads.append(p.grad.detach())
        if grads and self.preclip is None:
            self.preclip = (ids, _stack_norms(grads))

    def _grad_stats(self, opt: Any) -> None:
        self._grad_stats_of([p for g in opt.param_groups for p in g["params"]], self.records.setdefault(self.step, {}))

    def _grad_stats_of(self, params: list[Any], rec: dict) -> None:
        names, grads, none = [], [], []
        pre = dict(zip(self.preclip[0], range(len(self.preclip[0])))) if self.preclip else {}
        pre_idx: list[int] = []
        for p in params:
            if p.grad is None:
                if p.requires_grad:
                    none.append(self.names.get(id(p), "?"))
                continue
            names.append(self.names.get(id(p), "?"))
            if id(p) in pre:
                pre_idx.append(pre[id(p)])
                grads.append(None)
            else:
                pre_idx.append(-1)
                grads.append(p.grad.detach())
        rec["none_grads"] = none
        if not names:
            return
        now = [g for g in grads if g is not None]
        now_norms = _stack_norms(now) if now else None
        parts, j = [], 0
        for i, g in enumerate(grads):
            if g is None:
                parts.append(self.preclip[1][pre_idx[i]].reshape(1))  # type: ignore[index]
            else:
                parts.append(now_norms[j].reshape(1))  # type: ignore[index]
                j += 1
        norms = torch.cat(parts)
        if self.preclip:
            rec["grad_norm_before_clip"] = True

        def setter(v: list[float]) -> None:
            rec["param_grad_norms"] = dict(zip(names, v[:-1]))
            rec["grad_norm"] = v[-1]

        self.pending.add(torch.cat([norms, norms.double().pow(2).sum().sqrt().float().reshape(1)]), setter)

    def _unheld_grads(self) -> None:
        """Parameters of the model that got a gradient but that no optimizer seen so far holds."""
        held = set().union(*self.held.values()) if self.held else set()
        for p in self._model_params():
            if p.grad is not None and id(p) not in held:
                self.unheld[id(p)] = p

    def _update_ratio(self, opt: Any, originals: list[Any], rec: dict) -> None:
        prev = self.prev_params or []
        self.prev_params = None
        params = [p.detach() for p in originals]
        if not params or len(prev) != len(params):
            return
        torch._foreach_sub_(prev, params)  # prev now holds -Δw; its norm is ‖Δw‖
        dn = _stack_norms(prev)
        wn = _stack_norms(params)
        sizes = [len(g["params"]) for g in opt.param_groups] if opt is not None else [len(params)]
        names = [self.names.get(id(p), "?") for p in originals]
        del prev

        def setter(v: list[float]) -> None:
            n = len(params)
            d, w = v[:n], v[n:]
            rec["param_update_ratio"] = {nm: (di / wi if wi > 0 else None) for nm, di, wi in zip(names, d, w)}
            ratios, pos = [], 0
            for size in sizes:
                dd = math.sqrt(sum(x * x for x in d[pos : pos + size]))
                ww = math.sqrt(sum(x * x for x in w[pos : pos + size]))
                ratios.append(dd / ww if ww > 0 else None)
                pos += size
            rec["update_ratio"] = ratios

        self.pending.add(torch.cat([dn, wn]), setter)

    def _scheduler_stepped(self, sched: Any, opt: Any, before: list[Optional[float]]) -> None:
        n = self.sched_counts.get(id(sched), 0) + 1
        self.sched_counts[id(sched)] = n
        if n > 3:
            return
        site = user_site(self.script_path) or caller_site(3)
        primary = self.primary() if self.primary is not None else None
        self.emitter.emit(
            "scheduler_step",
            scheduler=type(sched).__name__,
            index=n,
            optimizer_steps=self.opt_steps.get(id(opt), 0) if opt is not None else None,
            primary=opt is primary or primary is None,
            lr_before=before,
            lr_after=[_float(g.get("lr")) for g in getattr(opt, "param_groups", [])],
            base_lrs=[_float(x) for x in getattr(sched, "base_lrs", [])],
            probe_step=self.step,
            scaler=self.scaler_seen,
            path=site[0],
            line=site[1],
        )

    def _send_params(self, opt: Any) -> None:
        """Name each parameter by its module path in the top-level model(s) seen during the first forward;
        with several models, by the script's name for each model too (``netG.0.weight``, ``netD.0.weight``)."""
        labels = self._model_labels()
        model_params: dict[int, tuple[str, Any]] = {}
        for mid, ref in self.top_models.items():
            top = ref()
            if top is None or not hasattr(top, "named_parameters"):
                continue
            prefix = f"{labels[mid]}." if mid in labels else ""
            for n, p in top.named_parameters():
                model_params.setdefault(id(p), (prefix + _strip_compiled(n), p))
        infos = []
        seen = set()
        groups = opt.param_groups if opt is not None else [{"params": self.manual_params}]
        for gi, g in enumerate(groups):
            for pi, p in enumerate(g["params"]):
                name = model_params.get(id(p), (f"group{gi}.param{pi}", p))[0]
                self.names[id(p)] = name
                seen.add(id(p))
                infos.append(_param_info(name, p, True, gi))
                if p.is_cuda:
                    self.cuda = True
        for pid, (name, p) in model_params.items():
            if pid not in seen:
                self.names[pid] = name
                infos.append(_param_info(name, p, False, None))
        before_norm = self._biases_before_norm()
        for info, pid in zip(infos, [id(p) for g in groups for p in g["params"]] + [pid for pid in model_params if pid not in seen]):
            if pid in before_norm:
                info["before_norm"] = True
        models = [{"name": labels.get(mid, ""), "class": type(getattr(ref(), "_orig_mod", ref())).__name__}
                  for mid, ref in self.top_models.items()
                  if ref() is not None and any(True for _ in ref().parameters())] if self.top_models else []
        self.emitter.emit("params", params=infos, optimizers=0 if opt is None else 1, manual=opt is None, models=models)
        if self.cuda:
            self._device_info()

    def _biases_before_norm(self) -> set[int]:
        """Biases of layers registered right before a batch norm layer (Conv-BN, Linear-BN): batch norm
        subtracts the batch mean, so such a bias gets no gradient by construction."""
        out: set[int] = set()
        for ref in self.top_models.values():
            top = ref()
            if top is None or not hasattr(top, "modules"):
                continue
            leaves = [m for m in top.modules() if not any(True for _ in m.children())]
            for a, b in zip(leaves, leaves[1:]):
                bias = getattr(a, "bias", None)
                if isinstance(b, torch.nn.modules.batchnorm._BatchNorm) and isinstance(bias, torch.Tensor):
                    out.add(id(bias))
        return out

    def _model_labels(self) -> dict[int, str]:
        """Names for the top-level models when there are several with parameters of their own: the variable
        that holds each in the script (``netG``), else its class name."""
        tops = {mid: ref() for mid, ref in self.top_models.items()}
        tops = {mid: m for mid, m in tops.items() if m is not None and hasattr(m, "parameters")}
        params = {mid: {id(p) for p in m.parameters()} for mid, m in tops.items()}
        own = [mid for mid, ps in params.items() if ps and not any(o != mid and ps <= params[o] for o in params)]
        if len(own) < 2:
            return {}
        found: dict[int, str] = {}
        frame = sys._getframe(1)
        while frame is not None:
            if os.path.realpath(frame.f_code.co_filename) == self.script_path:
                for scope in (frame.f_locals, frame.f_globals):
                    for k, v in list(scope.items()):
                        if id(v) in tops and id(v) in own and not k.startswith("_"):
                            found.setdefault(id(v), k)
            frame = frame.f_back
        labels, used = {}, set()
        for mid in own:
            label = found.get(mid) or type(tops[mid]).__name__
            base, k = label, 2
            while label in used:
                label, k = f"{base}{k}", k + 1
            used.add(label)
            labels[mid] = label
        return labels

    # ------------------------------------------------------------------ recipe: experiments on the first batch
    def _run_experiments(self) -> None:
        self.experiments_done = True
        if self.first_call is None:
            self.emitter.emit("experiment", name="*", skipped="no call of a top-level model on a batch was seen before the first step")
            return
        ref, args = self.first_call
        self.first_call = None
        model = ref()
        if model is None:
            return
        self.experimenting = True
        try:
            for name, result in run_experiments(model, args, self.options.experiments):
                self.emitter.emit("experiment", name=name, **result)
        except Exception as exc:
            self._internal(exc)
        finally:
            self.experimenting = False

    # ------------------------------------------------------------------ recipe: overfit one batch
    def _overfit_args(self, module: Any, args: tuple) -> Optional[tuple]:
        """The first step's batch, again: the i-th top-level model call of every step gets the i-th call's
        arguments of step 0."""
        i = self.window_calls
        self.window_calls += 1
        if self.step == 0:
            self.overfit_args.append((id(module), clone_args(args)))
            return None
        if i < len(self.overfit_args) and self.overfit_args[i][0] == id(module):
            self.overfit_replaced += 1
            return self.overfit_args[i][1]
        return None

    def _overfit_target(self, kind: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        i = self.window_loss_calls
        self.window_loss_calls += 1
        tgt = args[1] if len(args) > 1 else kwargs.get("target")
        if not isinstance(tgt, torch.Tensor):
            return args, kwargs
        if self.step == 0:
            self.overfit_targets.append((kind, tgt.detach().clone()))
            return args, kwargs
        if i < len(self.overfit_targets) and self.overfit_targets[i][0] == kind and self.overfit_targets[i][1].shape == tgt.shape:
            saved = self.overfit_targets[i][1]
            if len(args) > 1:
                return (args[0], saved, *args[2:]), kwargs
            return args, {**kwargs, "target": saved}
        return args, kwargs

    # ------------------------------------------------------------------ recipe: LR range test
    def _lr_sweep(self, opt: Any) -> None:
        """Set every group's LR to the sweep's value for this step (the script's own schedule is overridden);
        groups keep their ratios to the first group."""
        if self.lr_base is None:
            first = _float(opt.param_groups[0].get("lr")) or 1.0
            self.lr_base = [[(_float(g.get("lr")) or first) / first for g in opt.param_groups]]
            self.emitter.emit("lr_range", lr_min=self.options.lr_min, lr_max=self.options.lr_max,
                              script_lr=[_float(g.get("lr")) for g in opt.param_groups])
        n = max(1, self.max_steps - 1)
        lr = self.options.lr_min * (self.options.lr_max / self.options.lr_min) ** (self.step / n)
        for g, ratio in zip(opt.param_groups, self.lr_base[0]):
            g["lr"] = lr * ratio

    def _lr_range_diverged(self, rec: dict) -> None:
        loss = rec.get("loss")
        if loss is None:
            return
        if self.lr_first is None:
            self.lr_first = loss
        diverged = self.lr_best is not None and loss > LR_RANGE_DIVERGED * self.lr_best and loss > self.lr_first
        if not math.isfinite(loss) or (diverged and self.step > 3):
            self.emitter.emit("lr_range_stop", step=rec.get("step"), loss=loss)
            self.done = True
            return
        if self.lr_best is None or loss < self.lr_best:
            self.lr_best = loss

    # ------------------------------------------------------------------ device
    def _device_info(self) -> None:
        dev = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(dev)
        info: dict[str, Any] = {"type": "cuda", "index": dev, "name": props.name, "total_bytes": int(props.total_memory)}
        try:
            import pynvml  # optional: nvidia-ml-py

            pynvml.nvmlInit()
            self.nvml = pynvml
            info["nvml"] = True
        except Exception:
            info["nvml"] = False
        self.emitter.emit("device", device=info)

    def _cuda_memory(self) -> dict[str, float]:
        mem = {
            "allocated": float(torch.cuda.memory_allocated()),
            "reserved": float(torch.cuda.memory_reserved()),
            "peak_allocated": float(torch.cuda.max_memory_allocated()),
            "peak_reserved": float(torch.cuda.max_memory_reserved()),
        }
        if self.nvml is not None and self.sampling:
            mem.update(_nvml_memory(self.nvml, torch.cuda.current_device()))
        return mem

    # ------------------------------------------------------------------ flushing
    def flush(self) -> None:
        """Read every pending device scalar back (one sync) and send the finished step records."""
        try:
            self.pending.resolve()
        except Exception as exc:  # e.g. the device is gone after an OOM: send what we have
            self.pending.items.clear()
            self._internal(exc)
        if self.terms and not self.terms_sent and self.step > 0:
            self.terms_sent = True
            self.emitter.emit("loss_terms", terms=self.terms)
        for step in self.unsent:
            rec = self.records.pop(step, None)
            if rec is not None:
                self.emitter.emit("step", **rec)
        self.unsent.clear()

    def finish(self) -> None:
        """At the end of the script, whatever its outcome."""
        self.flush()
        if self.terms and not self.terms_sent:
            self.terms_sent = True
            self.emitter.emit("loss_terms", terms=self.terms)
        if self.other_steps:
            self.emitter.emit("other_step", count=self.other_steps)
        try:
            held = set().union(*self.held.values()) if self.held else set()
            unheld = [self.names.get(pid, "?") for pid in self.unheld if pid not in held]
            targets: dict[str, Any] = {}
            if self.label_counts is not None:
                targets["class_counts"] = [int(x) for x in self.label_counts.tolist()]
            if self.binary_counts is not None:
                neg, pos, hard = self.binary_counts.tolist()
                targets["binary_counts"] = [int(neg), int(pos)]
                targets["binary_hard"] = bool(hard)
            self.emitter.emit("summary", unheld_grads=unheld, optimizers_seen=len(self.held), targets=targets,
                              manual=self.manual, compiled=self.compiled_seen, overfit_replaced=self.overfit_replaced)
        except Exception as exc:
            self._internal(exc)

    def _internal(self, exc: BaseException) -> None:
        self.emitter.emit("internal", error=f"{type(exc).__name__}: {exc}")


def _reduction(kind: str, args: tuple, kwargs: dict) -> str:
    if "reduction" in kwargs:
        return str(kwargs["reduction"])
    if kwargs.get("size_average") is not None or kwargs.get("reduce") is not None:
        return "legacy"
    pos = REDUCTION_POS.get(kind)
    if pos is not None and len(args) > pos and isinstance(args[pos], str):
        return args[pos]
    return "mean" if kind != "kl_div" else "mean"


def _strip_compiled(name: str) -> str:
    """``torch.compile`` wraps a model as ``_orig_mod``: name parameters as the script's own model does."""
    return name.replace("_orig_mod.", "") if "_orig_mod" in name else name


def _units_fired(x: torch.Tensor) -> torch.Tensor:
    """Per unit, whether it was positive anywhere in a strided subset of the batch (no full-tensor copy).

    Units are channels (dim 1) of conv maps (4-D/5-D), and the last dimension otherwise ((N, F) and the
    (N, T, F) of sequence models).
    """
    if x.dim() >= 4:
        sub = x[: max(1, UNIT_ROWS // max(1, x[0, 0].numel()))]
        return (sub > 0).transpose(0, 1).reshape(x.shape[1], -1).any(dim=1)
    rows = x.reshape(-1, x.shape[-1]) if x.dim() >= 2 else x.reshape(1, -1)
    rstride = max(1, rows.shape[0] // UNIT_ROWS)
    return (rows[::rstride][:UNIT_ROWS] > 0).any(dim=0)


def _stack_norms(tensors: list[torch.Tensor], ord: int = 2) -> torch.Tensor:
    """Per-tensor L2 (or L1) norms as one 1-D float tensor, in one fused kernel where the platform has it."""
    try:
        return torch.stack([n.float() for n in torch._foreach_norm(tensors, ord)])
    except (AttributeError, RuntimeError, TypeError):
        return torch.stack([t.float().norm(p=ord) for t in tensors])


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (reading it whole would be a collective); any other tensor as it is."""
    local = getattr(t, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else t


def _tensor_leaves(value: Any, limit: int) -> list[torch.Tensor]:
    """The first ``limit`` tensors in a batch (tensors, tuples, lists, dicts, in order), depth-first."""
    out: list[torch.Tensor] = []
    stack = [value]
    while stack and len(out) < limit:
        v = stack.pop(0)
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            stack[:0] = list(v.values())
        elif isinstance(v, (list, tuple)):
            stack[:0] = list(v)
        elif hasattr(v, "__dict__") and hasattr(v, "keys") and hasattr(v, "values"):  # Mapping-like batches
            stack[:0] = list(v.values())
    return out


def _put_fp(rec: dict, key: str, index: int, count: int, values: list[float]) -> None:
    """Assemble a fingerprint from the per-tensor parts as they are read back."""
    parts = rec.setdefault(f"_{key}_parts", [None] * count)
    parts[index] = values
    if all(p is not None for p in parts):
        rec[key] = [x for p in parts for x in p]
        del rec[f"_{key}_parts"]


def _int(v: Any) -> Optional[int]:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _param_info(name: str, p: Any, in_opt: bool, group: Optional[int]) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(p.shape),
        "numel": int(p.numel()),
        "requires_grad": bool(p.requires_grad),
        "in_optimizer": in_opt,
        "group": group,
    }


def _nvml_memory(pynvml: Any, index: int) -> dict[str, float]:
    """Device total/used and what *other* processes hold, from NVML (physical index resolved via the UUID order)."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(index))
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        me = os.getpid()
        others, found_me = 0, False
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == me:
                found_me = True
            elif proc.usedGpuMemory:
                others += int(proc.usedGpuMemory)
        out = {"nvml_total": float(info.total), "nvml_used": float(info.used), "nvml_others": float(others)}
        if not found_me:
            # In a container NVML reports host PIDs (or none): estimate the others as what is used beyond our
            # allocator's reservation and a CUDA context allowance, rather than counting ourselves as "other".
            reserved = float(torch.cuda.memory_reserved())
            out["nvml_others"] = max(0.0, float(info.used) - reserved - CUDA_CONTEXT_BYTES)
            out["nvml_others_estimated"] = 1.0
        return out
    except Exception:
        return {}


def _physical_index(index: int) -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index < len(ids) and ids[index].isdigit():
        return int(ids[index])
    return index
