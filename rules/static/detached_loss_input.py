"""detached-loss-input: the model's prediction is detached before the loss, so no gradient reaches the model."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD, STEP
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class DetachedLossInput(Rule):
    name = "detached-loss-input"
    code = "DR404"
    severity = Severity.ERROR
    summary = "A backpropagated loss is computed on a detached prediction (.detach(), .data, .item(), .numpy())."
    why = """
        `.detach()`, `.data`, `.item()` and `.numpy()` cut a tensor off from the autograd graph. When the
        model's prediction goes through one of them before the loss, `loss.backward()` either fails ("element 0
        of tensors does not require grad") or, after the usual workaround `loss.requires_grad = True`, runs and
        leaves every parameter's `.grad` at None: the optimizer steps on nothing and the model never learns.
        Detaching the *target* (a DQN target network, a teacher's outputs, `fake.detach()` for the discriminator
        step) is correct.
    """
    known_problems = """
        Reported only for a loss call that provably reaches a `backward()` outside `no_grad`, whose prediction
        argument is a model output cut off by `.detach()`, `.data`, `.item()`, `.numpy()` (traced through
        assignments and helpers). Also reported: a loss backpropagated right before an optimizer step that
        reaches the stepped model only through a detach (a GAN's generator loss computed on `fake.detach()`);
        that needs the optimizer's parameter owners to be known, and any path that keeps the gradient silences
        it. Stays silent when another argument still carries the model's gradient (a detached target), when
        another loss term of the same backward trains the model, for losses computed only for logging (never
        backpropagated), and when the value cannot be traced to a model call.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        criterion = nn.CrossEntropyLoss()
        for x, y in loader:
            optimizer.zero_grad()
            output = model(x)
            loss = criterion(output.detach(), y)
            loss.requires_grad = True
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        criterion = nn.CrossEntropyLoss()
        for x, y in loader:
            optimizer.zero_grad()
            output = model(x)
            loss = criterion(output, y)
            loss.backward()
            optimizer.step()
    """
    fires = (
        """
import torch
criterion = torch.nn.MSELoss()
for x, y in loader:
    optimizer.zero_grad()
    output = model(x)
    loss = criterion(output.detach(), y)
    loss.requires_grad = True
    loss.backward()
    optimizer.step()
""",
        """
import torch
import torch.nn.functional as F
for x, y in loader:
    pred = model(x).data
    loss = F.mse_loss(pred, y)
    loss.backward()
""",
    )
    silent = (
        """
import torch
import torch.nn.functional as F
for s, a, r, s2 in replay:
    q = policy_net(s).gather(1, a)
    q_target = r + gamma * target_net(s2).max(1)[0].detach()
    loss = F.smooth_l1_loss(q, q_target.unsqueeze(1))
    loss.backward()
""",
        """
import torch
criterion = torch.nn.BCELoss()
for real in loader:
    fake = netG(noise)
    loss_d = criterion(netD(fake.detach()), zeros)
    loss_d.backward()
""",
        """
import torch
import torch.nn.functional as F
for x, y in loader:
    out = model(x)
    loss = F.cross_entropy(out, y)
    logged = F.cross_entropy(out.detach(), y).item()
    loss.backward()
""",
        """
import torch
import torch.nn.functional as F
for x, y in loader:
    with torch.no_grad():
        t = teacher(x).detach()
    loss = F.kl_div(F.log_softmax(student(x), -1), F.softmax(t, -1)) + F.mse_loss(t, student(x))
    loss.backward()
""",
    )

    def check(self, ctx):
        values = ctx.model.values
        reached = values.backpropagated_losses()
        for lc in values.loss_calls:
            if id(lc.node) not in reached or lc.input is None:
                continue
            cut = values.detached_model_output(lc.input)
            if cut is None:
                continue
            others = [a for a in lc.args if a is not lc.input]
            if any(values.attached_model_output(a) for a in others):
                continue  # the gradient flows through another argument (target-side detach)
            backward, sources = reached[id(lc.node)]
            inputs = [o.input for o in values.loss_calls if o.node is not lc.node and any(o.node is s for s in sources)]
            if any(values.attached_model_output(i) for i in inputs):
                continue  # another loss term of the same backward trains the model
            how = "" if cut.node is lc.input else f" (by `{ctx.segment(cut.node)}`)"
            yield self.finding(
                ctx,
                lc.input,
                f"the prediction `{ctx.segment(lc.input)}` is cut from autograd{how} before the loss backpropagated on "
                f"line {backward.lineno}: no gradient reaches the model",
            )
        yield from self._optimized_model_cut(ctx)

    def _optimized_model_cut(self, ctx):
        """The loss that a step follows reaches the stepped model only through a detach (a GAN's generator loss
        computed on ``fake.detach()``): that optimizer updates with no gradient from it."""
        m = ctx.model
        for loop, events in m.loop_views():
            for b in events:
                if b.kind != BACKWARD or b.via or b.no_grad or b.arg is None or b.loop is not loop:
                    continue
                step = next(
                    (e for e in events if e.kind == STEP and e.order > b.order and e.loop is loop and not e.exclusive_with(b)),
                    None,
                )
                if step is None or any(e.kind == BACKWARD and b.order < e.order < step.order for e in events):
                    continue
                info = m.info(step.target, at=step.node)
                roots = info.param_roots if info is not None else None
                if not roots:
                    continue
                reach = m.values.model_reach(b.arg)
                mine = {k: cut for k, cut in reach.items() if m.modules_related(k, roots)}
                if not mine or any(cut is None for cut in mine.values()):
                    continue
                model, cut = next(iter(mine.items()))
                loss = m.values.value_of(b.arg) if isinstance(b.arg, ast.Name) else None
                yield self.finding(
                    ctx,
                    loss if loss is not None else b.node,
                    f"`{ctx.segment(b.arg)}` reaches `{model}` only through `{ctx.segment(cut)}` (line {cut.lineno}), yet "
                    f"`{ctx.segment(step.node)}` ({step.line_ref}) updates `{model}`: no gradient of this loss "
                    "reaches it; compute the loss on the attached output, not on its detached copy",
                )
