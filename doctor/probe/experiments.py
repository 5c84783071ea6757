"""Karpathy's recipe, the in-run part: experiments on the first batch of the normal run (child process only).

At the first optimizer step the child calls the top-level model again on the batch it saw first, with the
model in eval mode (dropout off, batch norm on its running statistics), the random number generators saved
and restored and every module's train/eval flag put back, so the script's own training goes on exactly as
it would have. What each experiment measures:

- ``input-independent``: the output for the real batch against the output for zeroed inputs and for the
  batch rolled by one sample (token inputs included): relative change ‖out' − out‖ / ‖out‖.
- ``batch-independence``: the gradient of one sample's output with respect to the inputs (for token
  inputs, the output of the embedding that reads them): the share of its norm that lands on *other*
  samples. Checked along the first dimension the input and the output share (the batch), and the next
  one if the first mixes (a sequence-first layout).

Cost: two forward passes without gradient, and one forward and one or two backward passes, once.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import torch

#: A share of a sample's gradient below this on other samples is float noise: the samples are independent.
NO_LEAK = 1e-6


def first_tensor(output: Any) -> Optional[torch.Tensor]:
    """The model's main output: the tensor itself, ``logits`` of a dict or ModelOutput, the first of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = output.get("logits", next(iter(output.values()), None)) if output else None
        return output if isinstance(output, torch.Tensor) else None
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    logits = getattr(output, "logits", None)  # e.g. HuggingFace ModelOutput
    return logits if isinstance(logits, torch.Tensor) else None


def clone_args(args: Any) -> Any:
    """Detached copies of the tensors in a call's arguments (tuples, lists and dicts of them)."""
    if isinstance(args, torch.Tensor):
        return args.detach().clone()
    if isinstance(args, tuple):
        return tuple(clone_args(a) for a in args)
    if isinstance(args, list):
        return [clone_args(a) for a in args]
    if isinstance(args, dict):
        return {k: clone_args(v) for k, v in args.items()}
    return args


def run(model: Any, args: tuple, names: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, result) for each requested experiment; a result with ``skipped`` says why it could not run."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: run the original, no recompilation
    idx = next((i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() >= 1), None)
    if idx is None:
        for name in names:
            yield name, {"skipped": "the model's first call had no tensor argument to vary"}
        return
    modes = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m, _ in modes)
    model.eval()
    try:
        for name in names:
            try:
                if name == "input-independent":
                    yield name, _input_independent(model, args, idx)
                elif name == "batch-independence":
                    res = _batch_independence(model, args, idx)
                    res["batchnorm_train"] = batchnorm
                    yield name, res
            except Exception as exc:  # e.g. the model mutates its input in place; one experiment must not stop the run
                yield name, {"skipped": f"the experiment could not run on this model ({type(exc).__name__}: {str(exc)[:200]})"}
    finally:
        for m, training in modes:
            m.training = training
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _call(model: Any, args: tuple, idx: int, value: torch.Tensor) -> Optional[torch.Tensor]:
    call = list(args)
    call[idx] = value
    out = first_tensor(model(*call))
    return out if out is not None and out.is_floating_point() else None


def _input_independent(model: Any, args: tuple, idx: int) -> dict[str, Any]:
    x = args[idx]
    with torch.no_grad():
        base = _call(model, args, idx, x)
        if base is None:
            return {"skipped": "the model's output is not a floating-point tensor"}
        variants = {"zeroed input": torch.zeros_like(x)}
        if x.shape[0] >= 2:
            variants["other samples (batch rolled by one)"] = x.roll(1, 0)
        changes: dict[str, Optional[float]] = {}
        differs: dict[str, bool] = {}
        scale = float(base.float().norm()) or 1.0
        for label, v in variants.items():
            differs[label] = not torch.equal(v, x)
            out = _call(model, args, idx, v)
            if out is None or out.shape != base.shape:
                changes[label] = None
                continue
            changes[label] = float((out.float() - base.float()).norm()) / scale
    return {"relative_change": changes, "input_differs": differs, "input_shape": list(x.shape),
            "input_dtype": str(x.dtype).replace("torch.", ""), "output_shape": list(base.shape)}


def _batch_independence(model: Any, args: tuple, idx: int) -> dict[str, Any]:
    x = args[idx]
    captured: list[torch.Tensor] = []
    handles = []
    if x.is_floating_point():
        target = x.detach().clone().requires_grad_(True)
        what = "input"
    else:
        # Token ids have no gradient: measure at the output of the embedding that reads them.
        def grab(module: Any, inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad and tuple(out.shape[: x.dim()]) == tuple(x.shape) and not captured:
                captured.append(out)

        handles = [m.register_forward_hook(grab) for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        target = x
        what = "embedding output"
    try:
        with torch.enable_grad():
            out = _call(model, args, idx, target)
    finally:
        for h in handles:
            h.remove()
    if out is None:
        return {"skipped": "the model's output is not a floating-point tensor"}
    if not x.is_floating_point():
        if not captured:
            return {"skipped": "integer inputs, and no trainable nn.Embedding reading them was found to measure at"}
        target = captured[0]
    dims = [d for d in range(min(x.dim(), out.dim())) if x.shape[d] == out.shape[d] and x.shape[d] >= 2]
    if not dims:
        return {"skipped": f"no dimension of the output {list(out.shape)} lines up with the input {list(x.shape)} "
                           "(a flattened output): the batch dimension cannot be told"}
    results = []
    for d in dims[:2]:
        i = 1
        (g,) = torch.autograd.grad(out.select(d, i).float().sum(), target, retain_graph=True, allow_unused=True)
        if g is None:
            results.append({"dim": d, "sample": i, "leak": None, "grad_norm": 0.0})
            continue
        total = float(g.float().norm())
        own = float(g.select(d, i).float().norm())
        leak = math.sqrt(max(total * total - own * own, 0.0)) / total if total > 0 else None
        results.append({"dim": d, "sample": i, "leak": leak, "grad_norm": total})
        if leak is not None and leak < NO_LEAK:
            break
    return {"dims": results, "measured_at": what, "input_shape": list(x.shape), "output_shape": list(out.shape)}
