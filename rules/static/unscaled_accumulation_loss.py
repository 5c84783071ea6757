"""unscaled-accumulation-loss: accumulated micro-step losses are not divided by the number of micro-steps."""

from __future__ import annotations

import ast
import os

from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import replace_node
from doctor.analysis.frameworks import accumulation_divided, hf_trainers_without_scaling
from doctor.lint.rule import Rule

_SELF_SCALING = {"accelerate", "deepspeed", "dist"}


class UnscaledAccumulationLoss(Rule):
    name = "unscaled-accumulation-loss"
    code = "DR201"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "Gradients are accumulated over micro-steps but the backpropagated loss is not divided by their number."
    why = """
        With gradient accumulation the optimizer steps on the *sum* of the micro-step gradients. Unless each
        micro-step loss is divided by the number of micro-steps, the update is k times larger than the batch
        it imitates: the effective learning rate silently grows with the accumulation factor, and gradient
        clipping thresholds mean something else. Dividing only a logged copy of the loss does not help.
    """
    known_problems = """
        Accumulation is recognised from a step under a condition such as `if (i + 1) % k == 0` or a flag named
        like `accumulate`/`sync_gradients`/`should_step`, or from an inner loop named like
        `micro`/`accum`/`chunk`; a comparison that cannot change inside the loop (`if cfg.accum_steps > 1:`)
        selects a mode and is not taken as a window. Reported only when the loss reaching `backward()` is
        provably a raw loss (a torch loss function's or criterion's output, a model's `.loss`, or the output of
        a model whose readable `forward` returns a raw loss, traced through assignments and same-file helpers);
        a loss whose origin is unknown, or that is divided or multiplied by anything other than a constant
        anywhere on its way, counts as scaled. Stays silent inside `accelerator.accumulate(...)`, and for
        `accelerator.backward`, DeepSpeed and distributed-autograd backward passes, which scale themselves
        (except an `Accelerator()` built in this file without `gradient_accumulation_steps`). Dividing by the
        wrong number is not detected.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y)
            loss.backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y) / accum_steps
            loss.backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y)
            (loss / accum_steps).backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    fix_safety = """
        The fix divides the expression passed to `backward()` by the right-hand side of the `%` in the step's
        condition (`(loss / accum_steps).backward()`); a logged `loss` keeps its undivided value. It is unsafe
        because every update becomes k times smaller: that is the point, but the learning rate, warm-up and
        clipping threshold tuned on the old behaviour may need tuning again. It is offered only when the
        condition names the count plainly (`% accum_steps`, `% 4`) and the backward is in the same function.
    """
    fires = (
        """
import torch
ACCUM_STEPS = 4
def train(model, loader, optimizer):
    for i, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if (i + 1) % ACCUM_STEPS == 0:
            optimizer.step()
            optimizer.zero_grad()
""",
        """
import torch
criterion = torch.nn.CrossEntropyLoss()
for step, (x, y) in enumerate(loader):
    loss = criterion(model(x), y)
    log_loss = loss / args.gradient_accumulation_steps
    scaler.scale(loss).backward()
    if (step + 1) % args.gradient_accumulation_steps == 0 or step == len(loader) - 1:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
""",
        """
import torch
for batch in loader:
    optimizer.zero_grad()
    for micro in batch.split(micro_bs):
        loss = model(micro).loss
        loss.backward()
    optimizer.step()
""",
    )
    silent = (
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y) / accum
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y)
    loss /= accum
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y)
    scaler.scale(loss / accum).backward()
    if (i + 1) % accum == 0:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y) * (1.0 / accum)
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
def compute_loss(model, x, y):
    return criterion(model(x), y) / ACCUM
for i, (x, y) in enumerate(loader):
    loss = compute_loss(model, x, y)
    loss.backward()
    if (i + 1) % ACCUM == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
from accelerate import Accelerator
accelerator = Accelerator(gradient_accumulation_steps=4)
model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
for batch in loader:
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
for i, real in enumerate(loader):
    opt_d.zero_grad()
    d_loss(real).backward()
    opt_d.step()
    if i % n_critic == 0:
        opt_g.zero_grad()
        g_loss(real).backward()
        opt_g.step()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y)
    loss.backward()
    if i % 100 == 0:
        print(loss.item())
    optimizer.step()
    optimizer.zero_grad()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen = set()
        for _, _, acc in m.accumulations():
            for b in acc.backwards:
                if b.in_accumulate_context or id(b.node) in seen:
                    continue
                if b.flavor in _SELF_SCALING and not _accelerator_without_accumulation(m, b):
                    continue
                status = m.loss_status(*b.loss_here)
                if status not in ("raw", "model_output"):
                    continue  # divided, or we cannot tell (a model's output backpropagated as is is its loss)
                seen.add(id(b.node))
                opt = acc.step.target or "the optimizer"
                how = (
                    f"{opt} steps only when `{ctx.segment(acc.guard.test)}`" if acc.guard is not None
                    else f"{opt} steps once per pass of the micro-step loop on line {acc.micro_loop.node.lineno}"
                )
                yield self.finding(
                    ctx,
                    b.site(acc.step),
                    f"gradients are accumulated ({how}) but the loss passed to "
                    "backward() is not divided by the number of micro-steps: updates are k times too large",
                    fix=_fix(ctx, b, acc),
                )
        yield from self._framework_scaling_off(ctx)

    def _framework_scaling_off(self, ctx):
        """A Hugging Face trainer subclass that switched the trainer's own accumulation scaling off must divide
        in ``compute_loss``; a returned loss with no accumulation factor on its way is k times too large."""
        m = ctx.model
        for hf in hf_trainers_without_scaling(m):
            for ret in m.index.within(hf.compute_loss, ast.Return):
                if ret.value is None or m.enclosing_function(ret) is not hf.compute_loss:
                    continue
                if accumulation_divided(m, hf.compute_loss, ret.value) is not False:
                    continue
                where = f"line {hf.switch.lineno}" if hf.switch_program is m else f"{os.path.basename(hf.switch_program.path or '')}:{hf.switch.lineno}"
                yield self.finding(
                    ctx,
                    ret,
                    f"`{hf.cls.name}.compute_loss` returns a loss that is not divided for gradient accumulation, but the "
                    f"trainer's own division is switched off (`compute_loss_func=` in `super().__init__`, {where}): with "
                    "gradient_accumulation_steps > 1 every update is k times too large; divide by "
                    "`self.current_gradient_accumulation_steps` (or normalise by `num_items_in_batch`)",
                )


def _accelerator_without_accumulation(m, b) -> bool:
    """`accelerator.backward(loss)` divides by the accumulation steps only when the Accelerator was built with
    `gradient_accumulation_steps`; an `Accelerator()` built in this file without it does not."""
    import ast

    if b.flavor != "accelerate":
        return False
    info = m.info(b.target)
    call = info.node if info is not None else None
    if not isinstance(call, ast.Call) or not info.ctor.endswith("Accelerator"):
        return False
    if call.args or any(kw.arg is None for kw in call.keywords):
        return False  # positional or **kwargs: it may be configured
    return not any(kw.arg == "gradient_accumulation_steps" for kw in call.keywords)


def _fix(ctx, b, acc):
    """Divide the backpropagated expression by the accumulation count, when the condition names it plainly."""
    import ast

    if b.via or b.arg is None or acc.guard is None:
        return None
    divisor = None
    for node in ast.walk(acc.guard.test):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.right, ast.Constant) and not isinstance(node.right.value, int):
                continue
            divisor = ctx.segment(node.right)
            break
    if not divisor:
        return None
    target = b.arg
    if isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) and target.func.attr == "scale" and target.args:
        target = target.args[0]
    text = ctx.segment(target)
    if not text:
        return None
    # Always parenthesised: the expression may be the receiver of `.backward()`.
    return replace_node(ctx, target, f"({text} / {divisor})", f"divide the loss by {divisor}")
