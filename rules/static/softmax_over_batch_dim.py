"""softmax-over-batch-dim: a softmax normalised over the batch dimension instead of the classes."""

from __future__ import annotations

import ast
from typing import Iterator, Optional

from doctor.analysis.shapes import Shapes
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

_FUNCTION_NS = {"torch", "torch.nn.functional", "F", "functional", "nn.functional", "torch.special"}
_SOFTMAX = {"softmax", "log_softmax"}
_MODULES = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}
#: Methods whose dimension argument names the class dimension of what they are applied to.
_CLASS_DIM_METHODS = {"argmax", "max", "topk", "gather", "argsort", "sort"}


class SoftmaxOverBatchDim(Rule):
    name = "softmax-over-batch-dim"
    code = "DR405"
    severity = Severity.ERROR
    summary = "A softmax normalises over dimension 0 of a (batch, classes) tensor: across samples instead of across classes."
    why = """
        `softmax(x, dim=0)` on a `(batch, classes)` tensor makes each *column* sum to one: every class's scores are
        spread over the samples of the batch, and the probabilities of one sample no longer sum to one. A
        classifier trained through it learns to rank samples against each other; a policy network fed one state
        with a batch dimension (`state.unsqueeze(0)`) gets a probability of exactly 1 for every action, so the
        sampled actions are uniform and nothing is learned. Without `dim`, `F.softmax(x)` and `nn.Softmax()` pick
        the dimension themselves: dimension 1 for 2-D and 4-D inputs, but dimension 0 for a 3-D input such as
        the `(batch, time, vocabulary)` output of a language model or an LSTM, or batched attention scores from
        `torch.bmm`. PyTorch only prints a deprecation warning for the implicit choice, and nothing at all for
        an explicit `dim=0`.
    """
    known_problems = """
        The rule needs the shape to show in the code. An explicit `dim=0` (`F.softmax`, `torch.softmax`,
        `x.softmax(0)`, `log_softmax`, `nn.Softmax(dim=0)`/`nn.LogSoftmax(dim=0)` called directly or as the last
        layer of an `nn.Sequential`) is reported when the result is then used with its classes on dimension 1
        (`.argmax(1)`, `.max(1)`, `.gather(1, ...)`, `torch.argmax(p, dim=1)`, or the input of a classification
        loss such as `F.nll_loss`; for a softmax a `forward` returns, such a use of the module's output in this
        file), or when the softmax's input comes out of an `nn.Linear` with more than one
        output whose input is a batch: a batch drawn from a data loader, a sample given a batch dimension
        (`.unsqueeze(0)`, `x[None]`, `view(1, -1)`), a `torch.stack` of samples, or a `forward` input when every
        call of the module in this file passes one, followed through layers and element-wise operations that
        keep dimension 0 (`view`, `transpose`, matrix products, indexing and reductions stop it). So softmax over
        a leading dimension that is not the batch (attention over time steps in a `(time, batch)` layout, a
        transposed tensor, a similarity matrix) and over a batch of single scores (`Linear(..., 1)`, attention
        pooling over the instances of a bag) stay silent, and so does a batch that reaches the model through
        another file. An implicit `dim` is reported only for a 3-D input: an explicit 3-size `view`/`reshape`/
        `permute`, `torch.bmm` (also once scaled by a number or a `scale`/`temperature`-like factor), or the output of an `nn.LSTM`/`GRU`/`RNN` (taken to be batched, so that finding
        is a warning); 1-D inputs (where dimension 0 is the only one) and 2-D and 4-D inputs are not reported.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.distributions import Categorical


        class Policy(nn.Module):
            def __init__(self, n_obs=4, n_actions=2):
                super().__init__()
                self.hidden = nn.Linear(n_obs, 128)
                self.head = nn.Linear(128, n_actions)

            def forward(self, x):
                x = F.relu(self.hidden(x))
                return F.softmax(self.head(x), dim=0)


        policy = Policy()
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
        for episode in range(100):
            state = torch.randn(4).unsqueeze(0)
            probs = policy(state)
            dist = Categorical(probs)
            action = dist.sample()
            reward = torch.randn(())
            loss = -dist.log_prob(action) * reward
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.distributions import Categorical


        class Policy(nn.Module):
            def __init__(self, n_obs=4, n_actions=2):
                super().__init__()
                self.hidden = nn.Linear(n_obs, 128)
                self.head = nn.Linear(128, n_actions)

            def forward(self, x):
                x = F.relu(self.hidden(x))
                return F.softmax(self.head(x), dim=-1)


        policy = Policy()
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
        for episode in range(100):
            state = torch.randn(4).unsqueeze(0)
            probs = policy(state)
            dist = Categorical(probs)
            action = dist.sample()
            reward = torch.randn(())
            loss = -dist.log_prob(action) * reward
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
    """
    fires = (
        # A classifier's probabilities taken over the batch, then read per sample.
        """
import torch
import torch.nn.functional as F
for x, y in train_loader:
    logits = model(x)
    log_probs = F.log_softmax(logits, dim=0)
    loss = F.nll_loss(log_probs, y)
    loss.backward()
""",
        """
import torch
probs = torch.softmax(scores, 0)
pred = probs.argmax(dim=1)
""",
        # nn.Softmax(dim=0) closing an nn.Sequential classifier fed loader batches.
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10), nn.Softmax(dim=0))
loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
for images, labels in loader:
    probs = model(images.view(images.size(0), -1))
""",
        # Implicit dim on batched attention scores (3-D): PyTorch picks dimension 0.
        """
import torch
import torch.nn.functional as F
def attend(q, k, v):
    scores = torch.bmm(q, k.transpose(1, 2))
    weights = F.softmax(scores)
    return torch.bmm(weights, v)
""",
        # Implicit dim on an LSTM language model's output: a warning (the LSTM input is assumed batched).
        """
import torch.nn.functional as F
from torch import nn
class CharRNN(nn.Module):
    def __init__(self, vocab, hidden):
        super().__init__()
        self.lstm = nn.LSTM(vocab, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)
    def forward(self, x, h=None):
        out, h = self.lstm(x, h)
        return F.log_softmax(self.fc(out)), h
""",
    )
    silent = (
        # Explicit last dimension.
        """
import torch.nn.functional as F
for x, y in train_loader:
    probs = F.softmax(model(x), dim=-1)
    pred = probs.argmax(1)
""",
        # Attention over time steps in a (time, batch) layout: the leading dimension is not the batch.
        """
import torch
import torch.nn.functional as F
def attention(hidden, encoder_outputs):
    energy = torch.sum(hidden * encoder_outputs, dim=2)
    weights = F.softmax(energy, dim=0)
    return (weights.unsqueeze(2) * encoder_outputs).sum(0)
""",
        # A 1-D vector of action scores for one unbatched state: dimension 0 is the only one.
        """
import torch
import torch.nn.functional as F
from torch import nn
class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
    def forward(self, x):
        return F.softmax(self.fc(x), dim=0)
policy = Policy()
state = torch.from_numpy(obs).float()
probs = policy(state)
""",
        # Attention pooling over the instances of a bag: one score per instance, softmax over them.
        """
import torch
import torch.nn.functional as F
from torch import nn
class MILPool(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.score = nn.Linear(d, 1)
    def forward(self, h):
        a = F.softmax(self.score(h), dim=0)
        return (a * h).sum(0)
for bag, label in loader:
    z = pool(encoder(bag.squeeze(0)))
""",
        # Implicit dim on 2-D and 4-D inputs: PyTorch picks dimension 1, the classes.
        """
import torch.nn.functional as F
from torch import nn
clf = nn.Sequential(nn.Linear(20, 5), nn.Softmax())
for x, y in loader:
    p = F.softmax(model(x.view(x.size(0), -1)))
    seg = F.softmax(unet(images))
""",
        # A softmax over a transposed tensor: dimension 0 is the classes there.
        """
import torch
for x, y in loader:
    logits = model(x)
    p = torch.softmax(logits.t(), dim=0)
""",
    )

    def check(self, ctx):
        text = ctx.source.text
        if "softmax" not in text.lower():
            return
        m = ctx.model
        shapes = Shapes(m)
        for call, kind, dim, inp in _softmax_calls(m):
            if dim is None:
                if inp is None:
                    continue
                rank = shapes.ndim(inp)
                if rank is None or rank.ndim != 3:
                    continue
                yield self.finding(
                    ctx,
                    call,
                    f"`{ctx.segment(call)}` gives no `dim` and its input is 3-D ({rank.why}): PyTorch then normalises over "
                    "dimension 0 (the batch, or the time steps), not over the classes; pass `dim=-1`",
                    severity=Severity.WARNING if rank.assumed else None,
                )
                continue
            if dim != 0:
                continue
            why = _over_batch(m, shapes, call, inp)
            if why is None:
                continue
            yield self.finding(
                ctx,
                call,
                f"`{ctx.segment(call)}` normalises over dimension 0, which runs over the samples of the batch ({why}): "
                "each sample's class probabilities no longer sum to one; normalise over the classes (`dim=-1`)",
            )
        for ctor, kind, dim in _softmax_modules(m):
            if dim != 0:
                continue
            why = _module_over_batch(m, shapes, ctor)
            if why is None:
                continue
            yield self.finding(
                ctx,
                ctor,
                f"`{ctx.segment(ctor)}` normalises over dimension 0, which runs over the samples of the batch ({why}): "
                "each sample's class probabilities no longer sum to one; use `dim=-1`",
            )


def _dim_value(node: Optional[ast.AST]) -> Optional[int]:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        v = node.operand.value
        return -v if isinstance(v, int) and not isinstance(v, bool) else None
    return None


_UNKNOWN = object()


def _softmax_calls(m) -> Iterator[tuple[ast.Call, str, object, Optional[ast.AST]]]:
    """``(call, kind, dim, input)`` for each functional or method softmax; ``dim`` is None when not given and
    ``_UNKNOWN`` when it is not a number."""
    for call in m.index.of(ast.Call):
        func = call.func
        attr = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if attr not in _SOFTMAX:
            continue
        q = m.imports.qualify(func) or ""
        ns = q.rpartition(".")[0]
        if any(isinstance(a, ast.Starred) for a in call.args) or any(kw.arg is None for kw in call.keywords):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        if ns in _FUNCTION_NS:
            inp = call.args[0] if call.args else kw.get("input")
            dim_node = kw.get("dim", call.args[1] if len(call.args) > 1 else None)
        elif isinstance(func, ast.Attribute):
            inp = func.value
            dim_node = kw.get("dim", call.args[0] if call.args else None)
            if dim_node is None:
                continue  # `x.softmax()` without dim raises
        else:
            continue
        if dim_node is None:
            yield call, attr, None, inp
        else:
            value = _dim_value(dim_node)
            yield call, attr, (value if value is not None else _UNKNOWN), inp


def _softmax_modules(m) -> Iterator[tuple[ast.Call, str, object]]:
    for call in m.index.of(ast.Call):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in _MODULES:
            continue
        q = m.imports.qualify(func) or ""
        if not q.startswith(("torch.nn.", "nn.")):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        dim_node = kw.get("dim", call.args[0] if call.args else None)
        value = _dim_value(dim_node) if dim_node is not None else None
        yield call, _MODULES[name], (value if value is not None or dim_node is None else _UNKNOWN)


def _over_batch(m, shapes: Shapes, result: ast.AST, inp: Optional[ast.AST]) -> Optional[str]:
    """Why dimension 0 of the softmax's input is the batch of a (batch, classes) tensor, or None."""
    use = _class_dim_use(m, result, shapes=shapes)
    if use is not None:
        return use
    if inp is None:
        return None
    head = _class_head(m, shapes, inp)
    if head is None:
        return None
    batch = shapes.batched(inp)
    if batch is None:
        return None
    return f"{batch}; {head}"


def _class_head(m, shapes: Shapes, expr: ast.AST, depth: int = 0) -> Optional[str]:
    """The softmax's input is the output of an ``nn.Linear`` with several outputs (one score per class)."""
    if depth > 6:
        return None
    if isinstance(expr, ast.Name):
        d = m.values.definition(expr)
        if d is None or d[1] is not None:
            return None
        return _class_head(m, shapes, d[0].value, depth + 1)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Div, ast.Mult, ast.Add, ast.Sub)):
        for side, other in ((expr.left, expr.right), (expr.right, expr.left)):
            if isinstance(other, (ast.Constant, ast.Name, ast.Attribute)):
                found = _class_head(m, shapes, side, depth + 1)
                if found is not None:
                    return found
        return None
    if not isinstance(expr, ast.Call):
        return None
    func = expr.func
    if isinstance(func, ast.Attribute) and func.attr in ("float", "to", "contiguous", "clone", "double", "half"):
        return _class_head(m, shapes, func.value, depth + 1)
    name, ctor = shapes.layer_of(func)
    if name in ("Linear", "LazyLinear") and ctor is not None:
        out = next((k.value for k in ctor.keywords if k.arg == "out_features"), None)
        if out is None:
            out = ctor.args[1] if name == "Linear" and len(ctor.args) > 1 else ctor.args[0] if name == "LazyLinear" and ctor.args else None
        if out is None or (isinstance(out, ast.Constant) and out.value == 1):
            return None
        return f"`{ast.unparse(func)}` is `{ast.unparse(ctor)}`, one score per class"
    return None


def _uses(m, node: ast.AST) -> list[ast.AST]:
    """``node`` and, when it is assigned to a plain name, the later reads of that name that see this value."""
    out = [node]
    parent = m.index.parent(node)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
        name = parent.targets[0].id
        fn = m.enclosing_function(parent)
        for n in m.index.within(fn, ast.Name):
            if n.id != name or not isinstance(n.ctx, ast.Load) or (n.lineno, n.col_offset) <= (parent.lineno, parent.col_offset):
                continue
            d = m.values.definition(n)
            if d is not None and d[0] is parent:
                out.append(n)
    return out


def _class_dim_use(m, result: ast.AST, depth: int = 0, shapes: Optional[Shapes] = None) -> Optional[str]:
    """A use of the softmax's result that reads its classes on dimension 1: ``.argmax(1)``, ``.max(dim=1)``,
    ``torch.argmax(p, 1)``, ``.gather(1, a)``, or the input of a classification loss; for a value a module's
    ``forward`` returns, such a use of the module's output in this file."""
    for use in _uses(m, result):
        parent = m.index.parent(use)
        if isinstance(parent, ast.Return) and shapes is not None and depth < 2:
            fn = m.enclosing_function(parent)
            cls = m.class_of(fn)
            klass = m.classes.get(cls or "")
            if getattr(fn, "name", "") == "forward" and klass is not None:
                for call in shapes.instance_calls(klass):
                    found = _class_dim_use(m, call, depth + 1, shapes)
                    if found is not None:
                        return f"the module's output: {found}"
            continue
        if isinstance(parent, ast.Attribute) and parent.value is use:
            call = m.index.parent(parent)
            if isinstance(call, ast.Call) and call.func is parent:
                if parent.attr in _CLASS_DIM_METHODS and _dim_arg(call, 0) == 1:
                    return f"`{ast.unparse(call)}` on line {call.lineno} reads the classes on dimension 1"
                if parent.attr == "log" and depth == 0:
                    found = _class_dim_use(m, call, depth + 1, shapes)
                    if found is not None:
                        return found
            continue
        if isinstance(parent, ast.Call) and parent.args and parent.args[0] is use:
            q = m.imports.qualify(parent.func) or ""
            ns, _, last = q.rpartition(".")
            if ns in _FUNCTION_NS and last in _CLASS_DIM_METHODS and _dim_arg(parent, 1) == 1:
                return f"`{ast.unparse(parent)}` on line {parent.lineno} reads the classes on dimension 1"
            if ns in _FUNCTION_NS and last == "log" and depth == 0:
                found = _class_dim_use(m, parent, depth + 1, shapes)
                if found is not None:
                    return found
            kind = m.values.loss_kind(parent)
            if kind in ("cross_entropy", "nll") or (kind == "" and last in ("nll_loss", "cross_entropy")):
                return f"it is the input of `{ast.unparse(parent.func)}` on line {parent.lineno}, which takes (batch, classes)"
    return None


def _dim_arg(call: ast.Call, position: int) -> Optional[int]:
    for kw in call.keywords:
        if kw.arg == "dim":
            return _dim_value(kw.value)
    if len(call.args) > position:
        return _dim_value(call.args[position])
    return None


def _module_over_batch(m, shapes: Shapes, ctor: ast.Call) -> Optional[str]:
    """For ``nn.Softmax(dim=0)``: the calls of the module (or of the ``nn.Sequential`` it closes) get batches
    of class scores."""
    parent = m.index.parent(ctor)
    if isinstance(parent, ast.Call):
        # The last layer of an nn.Sequential: its input is the previous layer's output.
        q = m.imports.qualify(parent.func) or ""
        if q.rsplit(".", 1)[-1] != "Sequential" or not parent.args or parent.args[-1] is not ctor or len(parent.args) < 2:
            return None
        prev = parent.args[-2]
        if not (isinstance(prev, ast.Call) and (m.imports.qualify(prev.func) or "").rsplit(".", 1)[-1] == "Linear"):
            return None
        out = next((k.value for k in prev.keywords if k.arg == "out_features"), prev.args[1] if len(prev.args) > 1 else None)
        if out is None or (isinstance(out, ast.Constant) and out.value == 1):
            return None
        for call in _calls_of(m, parent):
            use = _class_dim_use(m, call, shapes=shapes)
            if use is not None:
                return use
            batch = shapes.batched(call.args[0]) if call.args else None
            if batch is not None:
                return f"{batch}; the layer before it is `{ast.unparse(prev)}`, one score per class"
        return None
    for call in _calls_of(m, ctor):
        inp = call.args[0] if call.args else None
        why = _over_batch(m, shapes, call, inp)
        if why is not None:
            return why
    return None


def _calls_of(m, ctor: ast.Call) -> list[ast.Call]:
    """Calls of the module object built by ``ctor`` (``self.softmax(x)``, ``model(images)``) in this file."""
    out = []
    for call in m.index.of(ast.Call):
        func = call.func
        if isinstance(func, (ast.Name, ast.Attribute)) and call.args and m.values.module_ctor(func) is ctor:
            out.append(call)
    return out
