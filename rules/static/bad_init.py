"""bad-init: weight initialisation that breaks training."""

from __future__ import annotations

import ast
import re
from typing import Optional

from doctor.analysis.names import call_arg, dotted_name, receiver_key
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

_LAYER_TYPES = re.compile(r"^(Linear|LazyLinear|Bilinear|Conv[123]d|ConvTranspose[123]d|LazyConv[123]d|Conv)$")
_NORM_TYPES = re.compile(r"Norm|BN|LN|GN", re.I)
#: Zero or special init is standard for these (LoRA B, zero-init residual/final projections, norms, gates).
_EXEMPT_NAME = re.compile(
    r"lora|adapter|(^|_)b($|_)|^B$|out_?proj|c_proj|o_proj|proj_?out|final|residual|head|gate|zero|norm|bn|ln|scale|alpha|skip|shortcut",
    re.I,
)
_STACK_NAME = re.compile(r"^(layers|blocks|convs|linears|fcs|hidden_layers|hidden|mlp_layers|stages|h)$")
_INIT_FNS = {"zeros_", "constant_", "ones_", "normal_", "uniform_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "trunc_normal_"}
_RELU_FAMILY = {"relu", "leaky_relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "prelu", "rrelu", "softplus", "hardswish"}
_SATURATING = {"tanh", "sigmoid"}
#: A fixed std this large on a Linear/Conv layer with fan-in n gives outputs with variance n*std^2: with
#: std >= 0.5 and the usual fan-ins (>= 64) activations grow 16x or more per layer.
LARGE_STD = 0.5


class BadInit(Rule):
    name = "bad-init"
    code = "DR301"
    severity = Severity.ERROR
    summary = "Weight initialisation that breaks training: constant weights, a gain for the wrong activation, a fixed large std."
    why = """
        Setting every weight of Linear/Conv layers to zero (or any constant) makes all units of a layer compute the
        same thing and receive the same gradient, so they never become different: the network has the capacity of
        one unit per layer (zeros also kill the gradient to earlier layers). An init whose gain was chosen for
        another activation (Kaiming/ReLU in a tanh network) and a fixed large std on wide layers make activations
        explode or saturate from the first step (severity warning: a smell rather than a certain bug).
    """
    known_problems = """
        Constant init is reported only when it reaches the Linear/Conv weights generically: a function given to
        `model.apply(...)` (or named like `init`) that tests `isinstance(m, nn.Linear)`, a loop over
        `model.modules()`, over a stack named `layers`/`blocks`/`h`..., or an init function's loop over
        `model.parameters()` that selects weights. Initialising one named layer (`self.fc.weight`) is taken as
        deliberate and never reported, and neither are names that conventionally start at zero (`lora`, `B`,
        `head`, `out_proj`, `c_proj`, `final`, `residual`, `gate`, `norm`, `scale`...), normalisation layers,
        biases, EMA/target copies, or an init behind a condition that picks layers by a flag or an attribute
        (`if zero_init_residual and hasattr(m, "bn3"):`). The ReLU-gain check compares with the activations used
        in the same class (else in the file) and speaks only when all of them are tanh/sigmoid. The large-std
        check needs a literal std of 0.5 or more (a uniform bound of 0.5·√3 or more), whatever the layer's
        width.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))

        def init_weights(m):
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

        model.apply(init_weights)
    """
    good = """
        import torch
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))

        def init_weights(m):
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

        model.apply(init_weights)
    """
    fires = (
        """
import torch.nn as nn
def init_weights(module):
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.constant_(module.weight, 0.0)
model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
model.apply(init_weights)
""",
        """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 64) for _ in range(4)])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.data.fill_(0.01)
""",
        """
import torch.nn as nn
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        m.weight.data.zero_()
""",
        """
import torch.nn as nn
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
""",
        """
import torch.nn as nn
def init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=1.0)
model.apply(init)
""",
    )
    silent = (
        """
import torch.nn as nn
for m in model.modules():
    if isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)
""",
        """
import torch.nn as nn
class LoRALinear(nn.Module):
    def __init__(self, d, r):
        super().__init__()
        self.lora_A = nn.Linear(d, r, bias=False)
        self.lora_B = nn.Linear(r, d, bias=False)
        nn.init.zeros_(self.lora_B.weight)
""",
        """
import torch.nn as nn
for m in model.modules():
    if isinstance(m, Bottleneck):
        nn.init.constant_(m.bn3.weight, 0)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
""",
        """
import torch.nn as nn
def _init_weights(module):
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=0.02)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=1.0)
""",
        """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3)
        self.relu = nn.ReLU()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
""",
        """
import torch.nn as nn
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.out_proj = nn.Linear(4 * d, d)
        nn.init.zeros_(self.out_proj.weight)
""",
        """
import torch.nn as nn
emb = nn.Embedding(1000, 64)
nn.init.uniform_(emb.weight, -1.0, 1.0)
""",
        """
import torch.nn as nn
def init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
model.apply(init_weights)
""",
    )

    def check(self, ctx):
        m = ctx.model
        calls = m.nodes(ast.Call)
        apply_fns = _applied_functions(calls)
        activations = _activation_families(calls, m.imports)
        for node in calls:
            init = _init_call(node, m.imports)
            if init is None:
                continue
            fn, weight, kind = init
            if kind == "nonlinearity":
                family = _init_family(node, fn)
                owner = _enclosing_class(m, node)
                local = _activation_families(m.index.within(owner, ast.Call), m.imports) if owner is not None else set()
                acts = local or activations
                if family == "relu" and acts and acts <= _SATURATING:
                    yield self.finding(
                        ctx, node,
                        f"`{fn}` uses the ReLU gain but this network's activations are {', '.join(sorted(acts))}: "
                        "activations start badly scaled; use `xavier_*` with `calculate_gain('tanh')` or a matching nonlinearity",
                        severity=Severity.WARNING,
                    )
                continue
            generic = _generic_layer_weight(ctx, weight, apply_fns)
            if generic is None:
                continue
            if kind == "constant":
                yield self.finding(
                    ctx, node,
                    f"`{ctx.segment(node)}` sets every weight of {generic} to the same value: all units of a layer stay "
                    "identical (symmetry is never broken); use a random init such as `kaiming_normal_` or `xavier_uniform_`",
                )
            elif kind == "large_std":
                yield self.finding(
                    ctx, node,
                    f"`{ctx.segment(node)}` draws weights of {generic} with a fixed std >= {LARGE_STD}: on wide layers "
                    "activations grow with the fan-in; use a fan-in-scaled init (kaiming/xavier) or std ~0.02",
                    severity=Severity.WARNING,
                )


def _enclosing_class(model, node: ast.AST) -> Optional[ast.ClassDef]:
    cur = model.parents.get(id(node))
    while cur is not None and not isinstance(cur, ast.ClassDef):
        cur = model.parents.get(id(cur))
    return cur


def _number(node: Optional[ast.AST]) -> Optional[float]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _number(node.operand)
        return -v if v is not None else None
    return None


def _number_or(node: Optional[ast.AST], default: float) -> Optional[float]:
    """The literal value of an argument, ``default`` when it was not passed, None when it is not a literal."""
    return default if node is None else _number(node)


def _weight_expr(node: ast.AST) -> Optional[ast.AST]:
    """``m.weight`` from ``m.weight``/``m.weight.data``, or a bare name (``p`` of a parameter loop); else None."""
    while isinstance(node, ast.Attribute) and node.attr == "data":
        node = node.value
    if isinstance(node, ast.Attribute) and node.attr == "weight":
        return node
    if isinstance(node, ast.Name):
        return node
    return None


def _init_call(call: ast.Call, imports) -> Optional[tuple[str, Optional[ast.AST], str]]:
    """(function name, weight expression, kind) where kind is constant | large_std | nonlinearity."""
    q = imports.qualify(call.func) or ""
    func = call.func
    if isinstance(func, ast.Attribute) and (q.startswith("torch.nn.init.") or q.startswith("nn.init.") or q.startswith("init.")) and func.attr in _INIT_FNS:
        name = func.attr
        weight = _weight_expr(call.args[0]) if call.args else None
        if name in ("zeros_", "ones_", "constant_"):
            return (name, weight, "constant") if weight is not None else None
        if name in ("normal_", "trunc_normal_"):
            # PyTorch's defaults: normal_(mean=0, std=1)
            std = _number_or(call_arg(call, "std", 2), 1.0)
            if std is not None and std >= LARGE_STD and weight is not None:
                return (name, weight, "large_std")
            if std == 0 and weight is not None:
                return (name, weight, "constant")
            return None
        if name == "uniform_":
            # PyTorch's defaults: uniform_(a=0, b=1), all weights positive
            lo = _number_or(call_arg(call, "a", 1), 0.0)
            hi = _number_or(call_arg(call, "b", 2), 1.0)
            if lo is not None and hi is not None and max(abs(lo), abs(hi)) >= LARGE_STD * 3 ** 0.5 and weight is not None:
                return (name, weight, "large_std")
            return None
        if name.startswith(("kaiming", "xavier")):
            return (name, weight, "nonlinearity")
        return None
    if isinstance(func, ast.Attribute):
        weight = _weight_expr(func.value)
        if weight is None:
            return None
        if func.attr == "zero_" and not call.args:
            return (func.attr, weight, "constant")
        if func.attr == "fill_" and call.args and _number(call.args[0]) is not None:
            return (func.attr, weight, "constant")
        if func.attr == "normal_":
            std = _number_or(call_arg(call, "std", 1), 1.0)
            if std is not None and std >= LARGE_STD:
                return (func.attr, weight, "large_std")
    return None


def _init_family(call: ast.Call, fn: str) -> Optional[str]:
    if fn.startswith("kaiming"):
        slope = call_arg(call, "a", 1)
        if slope is not None and _number(slope) != 0:
            return None  # e.g. PyTorch's own default `a=math.sqrt(5)`: not the ReLU gain
        nl = call_arg(call, "nonlinearity")
        if nl is None and len(call.args) > 3:
            nl = call.args[3]
        if nl is None:
            return "relu"  # the default leaky_relu with a=0 is the ReLU gain
        value = nl.value if isinstance(nl, ast.Constant) else None
        return "relu" if value in ("relu", "leaky_relu") else value if value in _SATURATING else None
    gain = call_arg(call, "gain", 1)
    if isinstance(gain, ast.Call) and getattr(gain.func, "attr", getattr(gain.func, "id", "")) == "calculate_gain" and gain.args:
        value = gain.args[0].value if isinstance(gain.args[0], ast.Constant) else None
        return "relu" if value in ("relu", "leaky_relu") else value if value in _SATURATING else None
    return None


def _activation_families(calls: list, imports) -> set[str]:
    """The activation functions these calls use, by family name."""
    found: set[str] = set()
    for node in calls:
        name = None
        q = imports.qualify(node.func) or ""
        last = q.rsplit(".", 1)[-1]
        if last[:1].isupper() and (q.startswith("torch.nn") or q.startswith("nn.")):
            name = last.lower()
        elif q.startswith(("torch.", "F.")) or q.startswith("torch.nn.functional"):
            name = last
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("relu", "tanh", "sigmoid", "gelu", "silu") and not node.args:
            name = node.func.attr
        if name is None:
            continue
        name = name.rstrip("_")
        if name in _RELU_FAMILY or name in _SATURATING:
            found.add(name)
        elif name in ("leakyrelu", "relu6", "hardtanh"):
            found.add("leaky_relu" if name == "leakyrelu" else "relu6" if name == "relu6" else "tanh")
    return found


def _applied_functions(calls: list) -> set[str]:
    """Names of functions passed to ``module.apply(fn)``."""
    out = set()
    for node in calls:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "apply" and node.args:
            key = receiver_key(node.args[0])
            if key:
                out.add(key.rsplit(".", 1)[-1])
    return out


def _generic_layer_weight(ctx, weight: Optional[ast.AST], apply_fns: set[str]) -> Optional[str]:
    """When ``weight`` is ``m.weight`` for every Linear/Conv module ``m`` reached generically, say how; else None."""
    if isinstance(weight, ast.Name):
        return _generic_parameter(ctx, weight)
    if weight is None or not isinstance(weight.value, ast.Name):  # type: ignore[attr-defined]
        return None
    var = weight.value.id  # type: ignore[attr-defined]
    m = ctx.model
    how = None
    cur = weight
    types: list[str] = []
    negative = False
    child = weight
    while True:
        cur = m.parents.get(id(child))
        if cur is None:
            break
        if isinstance(cur, ast.If):
            in_body = any(s is child for s in cur.body)
            tested = _tested_types(cur.test, var)
            if in_body and (_narrowed_by_name(cur.test, var) or _narrowed_by_flag(cur.test, var)):
                return None  # `if name == "head":` / `if zero_init_last and hasattr(m, "final_conv"):` is not generic
            if in_body:
                types.extend(tested)
            elif tested and not (isinstance(child, ast.If) and child in cur.orelse):
                negative = True
        if isinstance(cur, (ast.For, ast.AsyncFor)) and _binds(cur.target, var):
            it = cur.iter
            if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("modules", "named_modules", "children", "named_children"):
                how = "every matching module"
            elif isinstance(it, (ast.List, ast.Tuple)) and len(it.elts) > 1:
                names = [receiver_key(e) or "" for e in it.elts]
                if all(names) and not any(_EXEMPT_NAME.search(n.rsplit(".", 1)[-1]) for n in names):
                    how = f"every layer of [{', '.join(names)}]"
                    types = types or ["Linear"]
            else:
                stack = receiver_key(it)
                last = stack.rsplit(".", 1)[-1] if stack else ""
                if last and _STACK_NAME.match(last):
                    how = f"every layer of `{stack}`"
                    if not types:
                        types = ["Linear"]
            break
        if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in cur.args.args]
            if var in params and (cur.name in apply_fns or re.search(r"init", cur.name, re.I)):
                how = "every matching module (through `apply`)"
            break
        if isinstance(cur, ast.Lambda):
            if var in [a.arg for a in cur.args.args] and _applied_lambda(m, cur, apply_fns):
                how = "every matching module (through `apply`)"
            break
        if isinstance(cur, ast.IfExp) and any(n is child for n in (cur.body,)):
            types.extend(_tested_types(cur.test, var))
            if _narrowed_by_name(cur.test, var):
                return None
        child = cur
    if how is None or negative:
        return None
    if not types or any(_NORM_TYPES.search(t) for t in types) or not any(_LAYER_TYPES.match(t) for t in types):
        return None
    func = m.enclosing_function(weight)
    names = [getattr(func, "name", "")] + [n for n in types]
    if any(_EXEMPT_NAME.search(n) for n in names if n not in ("Linear",) and not _LAYER_TYPES.match(n)):
        return None
    return f"{how} ({', '.join(sorted(set(types)))})"


def _generic_parameter(ctx, name: ast.Name) -> Optional[str]:
    """``p`` in ``for p in model.parameters()`` / ``for n, p in model.named_parameters()``: every weight."""
    m = ctx.model
    tests: list[ast.AST] = []
    child: ast.AST = name
    for anc in m.index.ancestors(name):
        if isinstance(anc, ast.If):
            if not any(s is child for s in anc.body):
                return None  # an else-branch: we cannot tell which parameters
            tests.append(anc.test)
        if isinstance(anc, (ast.For, ast.AsyncFor)) and _binds(anc.target, name.id):
            it = anc.iter
            if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("parameters", "named_parameters")):
                return None
            owner = receiver_key(it.func.value) or ""
            if _EXEMPT_NAME.search(owner.rsplit(".", 1)[-1]) or re.search(r"ema|avg|average|shadow|target", owner, re.I):
                return None
            words = " ".join(ast.unparse(t) for t in tests)
            if re.search(r"bias|norm|bn|ln|embed|lora|scale|gamma", words, re.I):
                return None
            # Only an initialisation: a weight-selecting condition, or a function named for init. Zeroing
            # every parameter on purpose (`_zero_model` in a test, EMA accumulators) is not one.
            fn_name = getattr(m.enclosing_function(name), "name", "")
            if re.search(r"zero|clear|reset_grad|accum|ema|average", fn_name, re.I):
                return None
            if not (re.search(r"weight|dim\(\)|ndim", words) or re.search(r"init|reset_param", fn_name, re.I)):
                return None
            return f"every parameter of `{owner}`" + (f" where `{words}`" if words else "")
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return None
        child = anc
    return None


_TYPE_WORD = re.compile(r"^(Conv|Linear|BatchNorm|LayerNorm|GroupNorm|Embedding|Norm)", re.I)


def _narrowed_by_name(test: ast.AST, var: str) -> bool:
    """A condition on a module *name* (`name == "head"`, `"classifier" in name`, `n.startswith("fc")`)."""
    for node in ast.walk(test):
        if isinstance(node, ast.Compare):
            consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if consts and not any(_TYPE_WORD.match(c.value) for c in consts):
                return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith"):
            a = node.args[0] if node.args else None
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and not _TYPE_WORD.match(a.value):
                return True
    return False


def _narrowed_by_flag(test: ast.AST, var: str) -> bool:
    """A condition that picks layers by something other than their type: a flag (`zero_init_residual`), an
    attribute the layer carries (`hasattr(m, "final_conv")`, `m.is_last`)."""
    conjuncts = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]
    for part in conjuncts:
        if _tested_types(part, var):
            continue
        if isinstance(part, ast.Compare) and all(isinstance(c, ast.Constant) and c.value is None for c in part.comparators):
            continue  # `m.bias is not None`
        return True
    return False


def _applied_lambda(m, lam: ast.Lambda, apply_fns: set[str]) -> bool:
    parent = m.index.parent(lam)
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr == "apply":
        return True
    if isinstance(parent, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id in apply_fns for t in parent.targets)
    return False


def _binds(target: ast.AST, var: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == var for n in ast.walk(target))


def _tested_types(test: ast.AST, var: str) -> list[str]:
    """Class names a condition checks ``var`` against: isinstance, type(...) ==, classname.find('Conv') != -1."""
    out: list[str] = []
    for node in ast.walk(test):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" and len(node.args) == 2:
            if isinstance(node.args[0], ast.Name) and node.args[0].id == var:
                classes = node.args[1].elts if isinstance(node.args[1], (ast.Tuple, ast.List)) else [node.args[1]]
                out.extend((dotted_name(c) or "?").rsplit(".", 1)[-1] for c in classes)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for side in list(sides):
                if isinstance(side, (ast.List, ast.Tuple, ast.Set)):
                    sides.extend(side.elts)
            for side in sides:
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and re.match(r"^(Conv|Linear|BatchNorm|LayerNorm|Embedding|GroupNorm)", side.value):
                    out.append(re.match(r"^\w+", side.value).group(0))  # type: ignore[union-attr]
                elif isinstance(side, (ast.Attribute, ast.Name)) and (dotted_name(side) or "").rsplit(".", 1)[-1] in ("Linear", "Conv2d", "Conv1d", "Conv3d"):
                    out.append((dotted_name(side) or "").rsplit(".", 1)[-1])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("find", "startswith", "endswith") and node.args:
            a = node.args[0]
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                out.append(a.value)
    return out
