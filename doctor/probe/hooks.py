"""Instrumentation installed in the child before the user's script runs, through PyTorch's global hooks.

Cost model (why the code looks the way it does):
- Every optimizer step runs two cheap Python hooks: a step counter, the LR, host timers, and a
  detached reference to the loss. No host-device sync.
- On *sampled* steps (0, 1, 2 and every ``sample_every``-th) the module forward hooks are registered,
  gradient norms come from one ``torch._foreach_norm``, the update ‖Δw‖/‖w‖ from one parameter copy, and
  all numbers of the step (plus the losses of the unsampled steps before it) reach the host in a single
  ``tolist()`` per device. Activation statistics use strided subsets of at most ``SAMPLE_ELEMENTS``.
- Forward hooks are removed again after a sampled step, so unsampled steps pay nothing for them.
"""

from __future__ import annotations

import math
import os
import time
import traceback
import weakref
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.optim import optimizer as optim_mod
from torch.nn.modules import module as module_mod

from doctor.probe.stream import Emitter

#: Elements per tensor read for activation/output statistics: enough for stable fractions, small enough to be free.
SAMPLE_ELEMENTS = 4096
#: Rows per batch used to decide whether a unit ever fires (a unit that fires in 1 of 256 rows is alive).
UNIT_ROWS = 256
#: Rows of the model output used for diversity and the predicted-class histogram.
OUTPUT_ROWS = 256

#: What a CUDA context takes outside PyTorch's allocator (driver, cuBLAS/cuDNN workspaces): roughly 0.5 GiB.
CUDA_CONTEXT_BYTES = 512 * 2**20

RELU_FAMILY = (torch.nn.ReLU, torch.nn.ReLU6)
SATURATING = (torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.Hardtanh)

#: Functional losses that are wrapped, and the kind the initial-loss check understands.
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


class ProbeStop(BaseException):
    """Raised from a hook once enough steps were observed. A BaseException so ``except Exception`` lets it pass."""


def user_site(script_path: str, frames: Optional[list] = None) -> Optional[tuple[str, int]]:
    """The deepest frame that lies in the user's script: the line to point a finding at."""
    frames = frames if frames is not None else traceback.extract_stack()
    for fr in reversed(frames):
        if os.path.realpath(fr.filename) == script_path:
            return fr.filename, fr.lineno or 0
    return None


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

    def __init__(self, emitter: Emitter, script_path: str, steps: int, sample_every: int = 5) -> None:
        self.emitter = emitter
        self.script_path = os.path.realpath(script_path)
        self.max_steps = steps
        self.sample_every = max(1, sample_every)
        self.pending = _Pending()
        self.step = 0
        self.done = False
        self.primary: Optional[weakref.ref] = None
        self.other_steps = 0
        self.optimizers: set[int] = set()
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
        #: Backward passes since the last optimizer step (micro-steps of an accumulation window), whether
        #: a GradScaler scaled this window's losses, and the gradient norm right after its first backward.
        self.backwards = 0
        self.window_scaled = False
        self.scaled: dict[int, torch.Tensor] = {}
        self.loss_acc: Optional[torch.Tensor] = None
        self.loss_count = 0
        self.last_fn_loss: Optional[torch.Tensor] = None
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
        self.cuda = False
        self.nvml: Any = None

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
        from torch.utils.data import dataloader

        self._patch(dataloader._BaseDataLoaderIter, "__next__", self._wrap_next(dataloader._BaseDataLoaderIter.__next__))
        self._set_forward_hooks(True)

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        self.originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def uninstall(self) -> None:
        self._set_forward_hooks(False)
        for h in self.global_handles:
            h.remove()
        self.global_handles.clear()
        for owner, name, orig in reversed(self.originals):
            setattr(owner, name, orig)
        self.originals.clear()

    def _set_forward_hooks(self, on: bool) -> None:
        if on and not self.handles:
            self.depth = 0
            self.output_seen = False
            self.handles.append(module_mod.register_module_forward_pre_hook(self._fwd_pre))
            try:
                self.handles.append(module_mod.register_module_forward_hook(self._fwd_post, always_call=True))
            except TypeError:  # torch < 2.1 has no always_call
                self.handles.append(module_mod.register_module_forward_hook(self._fwd_post))
        elif not on:
            for h in self.handles:
                h.remove()
            self.handles.clear()

    # ------------------------------------------------------------------ wrappers
    def _wrap_loss(self, fn: Callable, kind: str) -> Callable:
        probe = self

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            if probe.done:
                raise ProbeStop()
            try:
                if isinstance(out, torch.Tensor) and out.dim() == 0:
                    probe.last_fn_loss = out.detach()
                inp = args[0] if args else kwargs.get("input")
                tgt = args[1] if len(args) > 1 else kwargs.get("target")
                if kind not in probe.loss_info_sent and isinstance(inp, torch.Tensor):
                    probe._loss_info(kind, inp, tgt, kwargs)
                elif probe.sampling and kind in ("cross_entropy", "nll") and isinstance(tgt, torch.Tensor):
                    probe._target_stats(inp, tgt)
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
            if probe.in_backward == 0 and isinstance(tensors, torch.Tensor) and tensors.dim() == 0:
                loss = probe.scaled.pop(id(tensors), None)
                probe._add_loss(loss if loss is not None else tensors.detach())
            outermost = probe.in_backward == 0
            probe.in_backward += 1
            try:
                out = fn(tensors, *args, **kwargs)
            finally:
                probe.in_backward -= 1
            if outermost:
                probe.backwards += 1
                if probe.backwards == 1 and probe.sampling:
                    try:
                        probe._first_backward_norm()
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
                probe.window_scaled = True
            return out

        return scale

    def _wrap_next(self, fn: Callable) -> Callable:
        probe = self

        def __next__(it: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(it)
            finally:
                probe.data_wait += time.perf_counter() - t0
                probe.batches += 1

        return __next__

    def _add_loss(self, loss: torch.Tensor) -> None:
        loss = loss.float()
        self.loss_acc = loss if self.loss_acc is None else self.loss_acc + loss
        self.loss_count += 1

    # ------------------------------------------------------------------ loss metadata
    def _loss_info(self, kind: str, inp: torch.Tensor, tgt: Any, kwargs: dict) -> None:
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
            if isinstance(tgt, torch.Tensor):
                self._target_stats(inp, tgt)
        if kind in ("cross_entropy", "nll", "bce_logits") and inp.is_floating_point() and inp.numel():
            # Range of what the loss receives: probabilities (in [0, 1], rows summing to 1) where logits
            # are expected is the runtime trace of a softmax/sigmoid in front of the loss.
            x = inp.detach().float()
            rows = x.sum(1).mean() if (kind != "bce_logits" and x.dim() >= 2) else x.new_full((), float("nan"))
            stats = torch.stack([x.min(), x.max(), rows])

            def set_range(v: list[float], info: dict = info) -> None:
                info["input_min"], info["input_max"] = v[0], v[1]
                if v[2] == v[2]:  # not NaN
                    info["input_row_sum"] = v[2]
                self.emitter.emit("loss_info", **info)

            self.pending.add(stats, set_range)
            return
        elif kind in ("bce", "bce_logits", "mse") and isinstance(tgt, torch.Tensor) and tgt.numel():
            t = tgt.detach().float().reshape(-1)
            stats = torch.stack([t.mean(), t.var(unbiased=False) if t.numel() > 1 else t.new_zeros(()), (t * t).mean()])

            def set_stats(v: list[float], info: dict = info) -> None:
                info["target_mean"], info["target_var"], info["target_sq_mean"] = v
                self.emitter.emit("loss_info", **info)

            self.pending.add(stats, set_stats)
            return
        self.emitter.emit("loss_info", **info)

    def _target_stats(self, inp: Any, tgt: torch.Tensor) -> None:
        """Share of the most frequent label in the batch: a model predicting one class is only wrong if the labels are not."""
        if tgt.dtype.is_floating_point or tgt.dim() == 0 or not isinstance(inp, torch.Tensor) or inp.dim() < 2:
            return
        classes = int(inp.shape[1])
        t = tgt.detach().reshape(-1)[:SAMPLE_ELEMENTS]
        t = torch.where((t >= 0) & (t < classes), t, torch.full_like(t, classes))
        bins = torch.bincount(t, minlength=classes + 1)[:classes]
        stat = torch.stack([bins.max().float(), bins.sum().float()])
        step = self.step

        def setter(v: list[float]) -> None:
            rec = self.records.setdefault(step, {})
            rec.setdefault("output", {})["label_top_frac"] = v[0] / v[1] if v[1] else None

        self.pending.add(stat, setter)

    # ------------------------------------------------------------------ forward hooks (sampled steps only)
    def _fwd_pre(self, module: Any, args: Any) -> None:
        self.depth += 1
        if self.depth == 1 and not isinstance(module, torch.nn.modules.loss._Loss):
            self.top_models.setdefault(id(module), weakref.ref(module))
            if self.batch_size is None and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
                self.batch_size = int(args[0].shape[0])

    def _fwd_post(self, module: Any, args: Any, output: Any) -> None:
        self.depth = max(0, self.depth - 1)
        if self.done:
            return
        try:
            if isinstance(module, RELU_FAMILY + SATURATING) and isinstance(output, torch.Tensor):
                self._activation(module, output)
            elif self.depth == 0 and not self.output_seen and not isinstance(module, torch.nn.modules.loss._Loss):
                out = _first_tensor(output)
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
                    self.module_names.setdefault(id(m), n or type(m).__name__)
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
            parts.append(torch.bincount(pred, minlength=ncols).max().float())
        stat = torch.stack(parts)
        step = self.step

        def setter(v: list[float]) -> None:
            o = self.records.setdefault(step, {}).setdefault("output", {})
            o.update({"row_spread": v[0], "scale": v[1], "rows": int(v[2]), "shape": list(x.shape)})
            if classify:
                o["pred_top_frac"] = v[3] / v[2] if v[2] else None

        self.pending.add(stat, setter)

    # ------------------------------------------------------------------ optimizer hooks
    def _step_pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self.done:
            raise ProbeStop()
        if self.primary is None:
            self.primary = weakref.ref(opt)
            self._send_params(opt)
        self.optimizers.add(id(opt))
        if self.primary() is not opt:
            return
        try:
            if self.sampling:
                self._grad_stats(opt)
                params = [p for g in opt.param_groups for p in g["params"]]
                self.prev_params = torch._foreach_mul([p.detach() for p in params], 1.0) if params else []
        except Exception as exc:
            self._internal(exc)

    def _step_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self.primary is None or self.primary() is not opt:
            self.other_steps += 1
            return
        now = time.perf_counter()
        step = self.step
        rec = self.records.setdefault(step, {})
        try:
            rec.update(
                step=step,
                sampled=self.sampling,
                lr=[_float(g.get("lr")) for g in opt.param_groups],
                wall_s=now - self.t_last,
                data_wait_s=self.data_wait,
                batches=self.batches,
                batch_size=self.batch_size,
                backwards=self.backwards,
                loss_scaled=self.window_scaled,
            )
            loss = self.loss_acc / self.loss_count if self.loss_acc is not None else self.last_fn_loss
            if loss is not None:
                self.pending.add(loss, lambda v, rec=rec: rec.__setitem__("loss", v[0]))
            if self.cuda:
                rec["memory"] = self._cuda_memory()
            if self.sampling and self.prev_params is not None:
                self._update_ratio(opt, rec)
        except Exception as exc:
            self._internal(exc)
        self.unsent.append(step)
        was_sampling = self.sampling
        self.loss_acc, self.loss_count, self.last_fn_loss = None, 0, None
        self.data_wait, self.batches = 0.0, 0
        self.backwards, self.window_scaled = 0, False
        self.step += 1
        if self.step >= self.max_steps:
            self.done = True
        self.sampling = not self.done and (self.step < 3 or self.step % self.sample_every == 0)
        if was_sampling or self.done:
            self.flush()
        if self.sampling != was_sampling:
            self._set_forward_hooks(self.sampling)
        self.depth = 0
        self.output_seen = False
        self.t_last = time.perf_counter()  # exclude the probe's own flush from the next step's time
        if self.done:
            self.emitter.emit("done", steps=self.step)
            raise ProbeStop()

    def _first_backward_norm(self) -> None:
        """Global gradient norm of the primary optimizer right after the first backward of a window: with k
        accumulated micro-steps the norm at the step is about k times this unless the loss was divided."""
        opt = self.primary() if self.primary is not None else None
        if opt is None:
            return
        grads = [p.grad.detach() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        rec = self.records.setdefault(self.step, {})
        total = _stack_norms(grads).double().pow(2).sum().sqrt().float().reshape(1)
        self.pending.add(total, lambda v, rec=rec: rec.__setitem__("first_backward_grad_norm", v[0]))

    def _grad_stats(self, opt: Any) -> None:
        names, grads, none = [], [], []
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    if p.requires_grad:
                        none.append(self.names.get(id(p), "?"))
                    continue
                names.append(self.names.get(id(p), "?"))
                grads.append(p.grad.detach())
        step = self.step
        rec = self.records.setdefault(step, {})
        rec["none_grads"] = none
        if not grads:
            return
        norms = _stack_norms(grads)

        def setter(v: list[float]) -> None:
            rec["param_grad_norms"] = dict(zip(names, v[:-1]))
            rec["grad_norm"] = v[-1]

        self.pending.add(torch.cat([norms, norms.double().pow(2).sum().sqrt().float().reshape(1)]), setter)

    def _update_ratio(self, opt: Any, rec: dict) -> None:
        prev = self.prev_params or []
        self.prev_params = None
        originals = [p for g in opt.param_groups for p in g["params"]]
        params = [p.detach() for p in originals]
        if not params or len(prev) != len(params):
            return
        torch._foreach_sub_(prev, params)  # prev now holds -Δw; its norm is ‖Δw‖
        dn = _stack_norms(prev)
        wn = _stack_norms(params)
        sizes = [len(g["params"]) for g in opt.param_groups]
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

    def _send_params(self, opt: Any) -> None:
        """Name each parameter by its module path in the top-level model(s) seen during the first forward."""
        model_params: dict[int, tuple[str, Any]] = {}
        for ref in self.top_models.values():
            top = ref()
            if top is None or not hasattr(top, "named_parameters"):
                continue
            for n, p in top.named_parameters():
                model_params.setdefault(id(p), (n, p))
        infos = []
        seen = set()
        for gi, g in enumerate(opt.param_groups):
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
        self.emitter.emit("params", params=infos, optimizers=1)
        if self.cuda:
            self._device_info()

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
        for step in self.unsent:
            rec = self.records.pop(step, None)
            if rec is not None:
                self.emitter.emit("step", **rec)
        self.unsent.clear()

    def finish(self) -> None:
        """At the end of the script, whatever its outcome."""
        self.flush()
        if self.other_steps:
            self.emitter.emit("other_step", count=self.other_steps)

    def _internal(self, exc: BaseException) -> None:
        self.emitter.emit("internal", error=f"{type(exc).__name__}: {exc}")


def _first_tensor(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = output.get("logits", next(iter(output.values()), None)) if output else None
        return output if isinstance(output, torch.Tensor) else None
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    logits = getattr(output, "logits", None)  # e.g. HuggingFace ModelOutput
    return logits if isinstance(logits, torch.Tensor) else None


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


def _stack_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor L2 norms as one 1-D float tensor, in one fused kernel where the platform has it."""
    try:
        return torch.stack([n.float() for n in torch._foreach_norm(tensors)])
    except (AttributeError, RuntimeError):
        return torch.stack([t.float().norm() for t in tensors])


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
