"""Which ``nn.Module`` classes hold which layers, and whose parameters an optimizer is given.

* ``parameter_roots(expr)``: the modules whose ``.parameters()`` (or ``named_parameters()``) an expression hands
  over (``model.parameters()``, ``[{"params": model.head.parameters()}]``, a list built from them earlier in the
  function), and whether anything else is in it (a tensor list we cannot follow).
* ``submodules(cls)``: the attributes a module class (and its readable bases) assigns in its methods, with what
  each holds: a layer with parameters (``nn.Linear``, a module class of the project), a parameter
  (``nn.Parameter``), a container of layers (``nn.ModuleList``, ``nn.Sequential``), a plain ``list``/``dict``/
  ``tuple`` of layers, a module handed in from outside, or something else.
* ``forward_reads(cls)``: the ``self.X`` attributes the forward pass reads (``forward`` and the methods it calls).
* ``frozen(...)``: whether code switches a module's gradients off (``requires_grad_(False)``, a loop setting
  ``p.requires_grad = False`` over its parameters).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.names import receiver_key
from doctor.analysis.program import Program

#: ``torch.nn`` classes without parameters or buffers: losing them from a container changes nothing.
PARAMETERLESS = {
    "ReLU", "ReLU6", "GELU", "SiLU", "ELU", "SELU", "CELU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Softmax",
    "LogSoftmax", "Softmax2d", "Mish", "Hardswish", "Hardsigmoid", "Hardtanh", "Identity", "Dropout", "Dropout1d",
    "Dropout2d", "Dropout3d", "AlphaDropout", "Flatten", "Unflatten", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d",
    "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle",
    "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "ChannelShuffle", "LogSigmoid", "Tanhshrink",
    "Softsign", "Threshold", "GLU", "CosineSimilarity", "PairwiseDistance",
}
#: ``torch.nn`` containers that register what they hold.
CONTAINERS = {"ModuleList", "ModuleDict", "Sequential", "ParameterList", "ParameterDict"}

# What an attribute holds.
LAYER = "layer"  # a module with parameters (or possibly with them: a module class of the project)
PARAMETER = "parameter"  # nn.Parameter(...)
CONTAINER = "container"  # nn.ModuleList / ModuleDict / Sequential / ParameterList
PLAIN = "plain"  # a plain list / dict / tuple holding layers
PASSED = "passed"  # a module handed in (a parameter of __init__) or taken from another object
NONE = "none"  # parameterless layers, numbers, anything known to hold no parameters
UNKNOWN = "unknown"


@dataclass
class Attribute:
    """One ``self.NAME = ...`` of a module class."""

    name: str
    holds: str
    #: The assignment (or the statement that filled a plain container: ``self.blocks.append(Block())``).
    node: ast.AST
    #: The module class the attribute's value is built from (``nn.Linear``, ``Block``), when known.
    what: str = ""
    #: Every assignment of this attribute in the class.
    nodes: list[ast.AST] = field(default_factory=list)


def parameter_roots(program: Program, expr: Optional[ast.AST], _depth: int = 0) -> tuple[frozenset[str], bool]:
    """``(roots, complete)``: the modules whose ``parameters()``/``named_parameters()`` flow into ``expr``, and
    whether that is all of it (False when a part is a tensor list or a call we cannot follow)."""
    roots: set[str] = set()
    complete = [True]
    _roots(program, expr, roots, complete, _depth)
    return frozenset(roots), complete[0]


def _roots(program: Program, expr: Optional[ast.AST], roots: set, complete: list, depth: int) -> None:
    if expr is None or depth > 4:
        complete[0] = False
        return
    if isinstance(expr, ast.Attribute) and depth > 0:
        # `[model.cls_token, model.pos_embed]`: parameters (or modules) named one by one.
        key = receiver_key(expr)
        if key:
            roots.add(key)
        else:
            complete[0] = False
        return
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("parameters", "named_parameters"):
        key = receiver_key(expr.func.value)
        if key:
            roots.add(key)
        else:
            complete[0] = False
        return
    if isinstance(expr, (ast.List, ast.Tuple, ast.Set)):
        for e in expr.elts:
            _roots(program, e.value if isinstance(e, ast.Starred) else e, roots, complete, depth + 1)
        return
    if isinstance(expr, ast.Dict):
        for k, v in zip(expr.keys, expr.values):
            if k is None:
                complete[0] = False
            elif isinstance(k, ast.Constant) and k.value == "params":
                _roots(program, v, roots, complete, depth + 1)
        return
    if isinstance(expr, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
        for g in expr.generators:
            _roots(program, g.iter, roots, complete, depth + 1)
        return
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        _roots(program, expr.left, roots, complete, depth + 1)
        _roots(program, expr.right, roots, complete, depth + 1)
        return
    if isinstance(expr, ast.Call):
        f = expr.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in ("list", "filter", "chain", "tuple", "iter") and expr.args:
            for a in expr.args[-1:] if name == "filter" else expr.args:
                _roots(program, a, roots, complete, depth + 1)
            return
        complete[0] = False
        return
    if isinstance(expr, ast.Name):
        values = getattr(program, "values", None)
        value = None
        d = values.definition(expr) if values is not None else None
        if d is not None:
            value = d[0].value  # type: ignore[attr-defined]
            if d[1] is not None:
                # `decay, no_decay = [], []`: the element unpacked into this name.
                value = value.elts[d[1]] if isinstance(value, (ast.Tuple, ast.List)) and d[1] < len(value.elts) else None
        if value is None:
            loop = _parameter_loop(program, expr)
            if loop is not None:
                roots.add(loop)
            else:
                complete[0] = False
            return
        _roots(program, value, roots, complete, depth + 1)
        extended = _extended(program, expr)
        if extended is None:
            complete[0] = False
        else:
            for e in extended:
                _roots(program, e, roots, complete, depth + 1)
        return
    complete[0] = False


def _parameter_loop(program: Program, name: ast.Name) -> Optional[str]:
    """``p`` bound by ``for n, p in model.named_parameters()`` around ``name``: the module (``model``)."""
    for anc in program.index.ancestors(name):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return None
        if isinstance(anc, (ast.For, ast.AsyncFor)):
            it = anc.iter
            if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("parameters", "named_parameters"):
                targets = [anc.target] if isinstance(anc.target, ast.Name) else list(getattr(anc.target, "elts", []))
                if targets and isinstance(targets[-1], ast.Name) and targets[-1].id == name.id:
                    return receiver_key(it.func.value)
    return None


def _extended(program: Program, name: ast.Name) -> Optional[list[ast.AST]]:
    """What ``params.append(...)``/``extend(...)``/``+=`` add to a list name before ``name`` reads it; None when the
    list changes in another way."""
    fn = program.enclosing_function(name)
    out: list[ast.AST] = []
    for node in program.index.within(fn, ast.Call, ast.AugAssign):
        if (node.lineno, node.col_offset) >= (name.lineno, name.col_offset) or program.enclosing_function(node) is not fn:
            continue
        if isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name.id:
                out.append(node.value)
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == name.id:
            if f.attr in ("append", "extend") and node.args:
                out.append(node.args[0])
            elif f.attr in ("insert",) and len(node.args) > 1:
                out.append(node.args[1])
            elif f.attr not in ("copy", "index", "count"):
                return None
    return out


@dataclass(frozen=True)
class OptimizerBuild:
    """An optimizer constructor call of the file and the modules whose parameters it is given."""

    key: str
    call: ast.Call
    roots: frozenset[str]
    #: Every part of the parameter argument was followed (no tensor list or call we could not read).
    complete: bool
    #: The roots come from the model handed to a factory (``build_optimizer(model, cfg)``), not from parameters.
    factory: bool = False


#: Framework calls that hand back an optimizer built elsewhere.
_PASS_THROUGH = {"prepare", "setup", "initialize", "prepare_optimizer", "wrap", "setup_optimizers"}


def optimizer_builds(program: Program) -> list[OptimizerBuild]:
    """Every optimizer the file builds (by constructor), with the modules whose parameters it is given:
    ``AdamW(model.parameters())``, parameter groups, a list of parameters built earlier in the function, or a
    factory handed the model (``build_optimizer(model, cfg)``)."""
    out: list[OptimizerBuild] = []
    found: list[tuple[str, ast.Call]] = []
    for key, infos in program.objects.history.items():
        for info in infos:
            if info.kind != K.OPTIMIZER:
                continue  # not built by an optimizer class or factory (an unknown class is not read here)
            info = program.objects.verified(key, info) if info.unverified else info
            if info is None or info.kind != K.OPTIMIZER or not isinstance(info.node, ast.Call) or info.from_name_only:
                continue
            call = K.unwrap_moves(info.node)
            if isinstance(call, ast.Call):
                found.append((key, call))
    seen = {id(c) for _, c in found}
    for call in program.index.of(ast.Call):
        # Built without a name: `return torch.optim.AdamW(groups, lr=...)`.
        if id(call) in seen or not isinstance(call.func, (ast.Name, ast.Attribute)):
            continue
        q = program.imports.qualify(call.func) or ""
        if q.split(".")[0] in ("torch", "optim") and K.classify_ctor(q, {}) == K.OPTIMIZER and isinstance(program.index.parent(call), ast.Return):
            found.append(("", call))
    for key, call in found:
        name = (program.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
        if name in _PASS_THROUGH:
            continue
        first = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "params"), None)
        roots, complete = parameter_roots(program, first) if first is not None else (frozenset(), False)
        if roots:
            out.append(OptimizerBuild(key, call, roots, complete))
            continue
        models = frozenset(
            k for a in list(call.args) + [kw.value for kw in call.keywords]
            for k in [receiver_key(a)] if k and program.objects.kind(k) == K.MODEL
        )
        if models:
            out.append(OptimizerBuild(key, call, models, False, factory=True))
    return out


class ModuleTables:
    """Module classes of one file: their attributes and what their forward pass reads."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self._cache: dict[int, dict[str, Attribute]] = {}

    # -- what a value is -------------------------------------------------------------------------------------
    def layer_kind(self, program: Program, value: ast.AST, params: frozenset[str] = frozenset(), depth: int = 0) -> tuple[str, str]:
        """``(holds, what)`` for a value assigned to a module attribute."""
        value = K.unwrap_moves(value)
        if isinstance(value, ast.Call):
            q = program.imports.qualify(value.func) or ""
            last = q.rsplit(".", 1)[-1]
            if q.startswith(("torch.nn.", "nn.")) or (last in CONTAINERS | {"Parameter"} and q.startswith("torch")):
                if last == "Parameter":
                    frozen = next((kw.value for kw in value.keywords if kw.arg == "requires_grad"), value.args[1] if len(value.args) > 1 else None)
                    if isinstance(frozen, ast.Constant) and frozen.value is False:
                        return NONE, "nn.Parameter(requires_grad=False)"
                    return PARAMETER, "nn.Parameter"
                if last in CONTAINERS:
                    return CONTAINER, f"nn.{last}"
                if last in PARAMETERLESS or last.endswith("Loss"):
                    return NONE, f"nn.{last}"
                if last[:1].isupper():
                    if last.startswith(("InstanceNorm",)) and not any(kw.arg == "affine" for kw in value.keywords):
                        return NONE, f"nn.{last}"  # no affine parameters by default
                    return LAYER, f"nn.{last}"
                return UNKNOWN, ""
            found = program.resolve_class(value.func)
            if found is not None:
                kind = found[0].class_kind(found[1])
                if kind == K.MODEL:
                    if depth < 2 and not self.has_parameters(found[0], found[1], depth + 1):
                        return NONE, found[1].name
                    return LAYER, found[1].name
                return (NONE if kind is not None else UNKNOWN), found[1].name
            return UNKNOWN, ""
        if isinstance(value, (ast.List, ast.Tuple, ast.ListComp, ast.Dict, ast.DictComp)):
            elts = (
                [value.elt] if isinstance(value, ast.ListComp)
                else [value.value] if isinstance(value, ast.DictComp)
                else list(value.values) if isinstance(value, ast.Dict)
                else list(value.elts)
            )
            if not elts:
                return NONE, ""
            kinds = [self.layer_kind(program, e, params, depth) for e in elts if not isinstance(e, ast.Starred)]
            layers = [w for h, w in kinds if h in (LAYER, CONTAINER)]
            if layers:
                return PLAIN, layers[0]
            if any(h == PASSED for h, _ in kinds):
                return PASSED, ""
            return (NONE if all(h == NONE for h, _ in kinds) else UNKNOWN), ""
        if isinstance(value, ast.Name) and value.id in params:
            return PASSED, ""
        if isinstance(value, (ast.Attribute, ast.Subscript)):
            return PASSED, ""  # a module (or part of one) held elsewhere
        if isinstance(value, ast.Constant) or isinstance(value, (ast.BinOp, ast.JoinedStr)):
            return NONE, ""
        return UNKNOWN, ""

    def has_parameters(self, program: Program, cls: ast.ClassDef, depth: int = 0) -> bool:
        """May instances of ``cls`` hold parameters? Yes unless every attribute it assigns is known to hold none
        and it subclasses nothing but ``nn.Module`` and classes of the project."""
        tables = self if program is self.program else ModuleTables(program)
        attrs = tables.submodules(cls, depth)
        if any(a.holds != NONE for a in attrs.values()):
            return True
        return not all(_plain_module(p, k) for p, k in program.class_bases(cls))

    def trains_nothing(self, program: Program, cls: ast.ClassDef) -> bool:
        """Does ``cls`` hold no trainable parameter? Every attribute holds none, or a frozen pretrained table
        (``nn.Embedding.from_pretrained(t)``, frozen by default), and it subclasses only ``nn.Module`` and project
        classes. Its forward records no graph of its own."""
        tables = self if program is self.program else ModuleTables(program)
        for attr in tables.submodules(cls).values():
            if attr.holds == NONE:
                continue
            if not all(_frozen_table(program, n) or _a_number(n) for n in (attr.nodes or [attr.node])):
                return False
        return all(_plain_module(p, k) for p, k in program.class_bases(cls))

    # -- attributes of a class -----------------------------------------------------------------------------
    def submodules(self, cls: ast.ClassDef, depth: int = 0) -> dict[str, Attribute]:
        """``self.X`` attributes assigned in the methods of ``cls`` and of its readable bases (nearest first)."""
        if id(cls) in self._cache:
            return self._cache[id(cls)]
        self._cache[id(cls)] = {}
        out: dict[str, Attribute] = {}
        for program, klass in reversed(self.program.class_bases(cls)):
            tables = self if program is self.program else ModuleTables(program)
            for name, attr in tables._own(program, klass, depth).items():
                out[name] = attr
        self._cache[id(cls)] = out
        return out

    def _own(self, program: Program, cls: ast.ClassDef, depth: int) -> dict[str, Attribute]:
        out: dict[str, Attribute] = {}
        for item in cls.body:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = frozenset(a.arg for a in item.args.posonlyargs + item.args.args + item.args.kwonlyargs)
            for node in program.index.within(item, ast.Assign, ast.AnnAssign):
                if program.enclosing_function(node) is not item:
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                if value is None:
                    continue
                for t in targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        holds, what = self.layer_kind(program, value, params, depth)
                        if isinstance(value, ast.Name) and holds == UNKNOWN:
                            holds, what = self._local_list(program, item, value, params, depth)
                        prev = out.get(t.attr)
                        attr = Attribute(t.attr, holds, node, what, (prev.nodes if prev else []) + [node])
                        if prev is not None and prev.holds != holds:
                            attr.holds = _merge(prev.holds, holds)
                        out[t.attr] = attr
            # `self.blocks.append(Block())` fills a plain list attribute.
            for call in program.index.within(item, ast.Call):
                f = call.func
                if not (isinstance(f, ast.Attribute) and f.attr in ("append", "extend", "insert") and call.args):
                    continue
                recv = f.value
                if isinstance(recv, ast.Attribute) and isinstance(recv.value, ast.Name) and recv.value.id == "self" and recv.attr in out:
                    attr = out[recv.attr]
                    arg = call.args[-1]
                    if f.attr == "extend" and isinstance(arg, (ast.List, ast.Tuple, ast.ListComp)):
                        holds, what = self.layer_kind(program, arg, params, depth)
                        holds = LAYER if holds == PLAIN else holds
                    else:
                        holds, what = self.layer_kind(program, arg, params, depth)
                    if attr.holds in (NONE, PLAIN) and _is_empty_container(attr.node) and holds in (LAYER, CONTAINER, PLAIN):
                        out[recv.attr] = Attribute(recv.attr, PLAIN, call, what, attr.nodes)
            for node in program.index.within(item, ast.Assign):
                # `self.heads[name] = nn.Linear(...)` fills a plain dict attribute.
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and isinstance(t.value.value, ast.Name) and t.value.value.id == "self":
                        name = t.value.attr
                        if name in out and _is_empty_container(out[name].node):
                            holds, what = self.layer_kind(program, node.value, params, depth)
                            if holds in (LAYER, CONTAINER):
                                out[name] = Attribute(name, PLAIN, node, what, out[name].nodes)
        return out

    def _local_list(self, program: Program, fn: ast.AST, name: ast.Name, params: frozenset[str], depth: int) -> tuple[str, str]:
        """``layers = []`` filled with ``layers.append(nn.Linear(...))`` in a loop, then ``self.layers = layers``."""
        values = getattr(program, "values", None)
        value = values.value_of(name) if values is not None else None
        if value is None:
            return UNKNOWN, ""
        holds, what = self.layer_kind(program, value, params, depth)
        if holds != NONE or not _is_empty_literal(value):
            return holds, what
        found: tuple[str, str] = (NONE, "")
        for call in program.index.within(fn, ast.Call):
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == name.id and call.args:
                if (call.lineno, call.col_offset) > (name.lineno, name.col_offset):
                    continue
                if f.attr in ("append", "insert"):
                    h, w = self.layer_kind(program, call.args[-1], params, depth)
                    if h in (LAYER, CONTAINER):
                        found = (PLAIN, w)
                    elif h in (PASSED, UNKNOWN) and found[0] == NONE:
                        found = (h, w)
                elif f.attr == "extend":
                    return UNKNOWN, ""
        for node in program.index.within(fn, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == name.id:
                    h, w = self.layer_kind(program, node.value, params, depth)
                    if h in (LAYER, CONTAINER):
                        found = (PLAIN, w)
        return found

    # -- the forward pass -------------------------------------------------------------------------------------
    def forward_reads(self, cls: ast.ClassDef) -> Optional[set[str]]:
        """The ``self.X`` attributes read by ``forward`` and the methods of the class it calls (None when the
        class has no readable ``forward``). Reads under ``torch.no_grad()`` are left out."""
        found = self.program.class_method(cls, "forward")
        if found is None:
            return None
        reads: set[str] = set()
        seen: set[int] = set()
        todo = [found]
        while todo:
            program, fn = todo.pop()
            if id(fn) in seen or len(seen) > 40:
                continue
            seen.add(id(fn))
            for node in program.index.within(fn, ast.Attribute):
                if not (isinstance(node.value, ast.Name) and node.value.id == "self" and isinstance(node.ctx, ast.Load)):
                    continue
                if _under_no_grad(program, node, fn):
                    continue
                reads.add(node.attr)
                parent = program.index.parent(node)
                if isinstance(parent, ast.Call) and parent.func is node:
                    method = self.program.class_method(cls, node.attr)
                    if method is not None:
                        todo.append(method)
            for node in program.index.within(fn, ast.Call):
                # `getattr(self, f"layer{i}")`: every attribute may be read.
                if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "self":
                    return None
        return reads


def _under_no_grad(program: Program, node: ast.AST, fn: ast.AST) -> bool:
    for anc in program.index.ancestors(node):
        if anc is fn:
            return False
        if isinstance(anc, (ast.With, ast.AsyncWith)):
            for item in anc.items:
                ctx = item.context_expr
                name = ctx.func if isinstance(ctx, ast.Call) else ctx
                text = ast.unparse(name)
                if text.endswith(("no_grad", "inference_mode")):
                    return True
    return False


def _plain_module(program: Program, cls: ast.ClassDef) -> bool:
    """A module class of the project whose bases are all plain ``nn.Module``s (no library model underneath)."""
    for base in cls.bases:
        q = program.imports.qualify(base) or ""
        if q.rsplit(".", 1)[-1] != "Module" and program.resolve_class(base) is None:
            return False
    return True


def _is_empty_literal(value: ast.AST) -> bool:
    if isinstance(value, (ast.List, ast.Tuple, ast.Dict)):
        return not (value.keys if isinstance(value, ast.Dict) else value.elts)
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in ("list", "dict") and not value.args and not value.keywords:
        return True
    return False


def _is_empty_container(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    return value is not None and _is_empty_literal(value)


def _merge(a: str, b: str) -> str:
    if a == b:
        return a
    if PLAIN in (a, b) and {a, b} <= {PLAIN, NONE}:
        return PLAIN
    if LAYER in (a, b) and {a, b} <= {LAYER, NONE, PARAMETER, CONTAINER}:
        return LAYER
    return UNKNOWN


_MANUAL_UPDATES = {"copy_", "mul_", "add_", "lerp_", "sub_", "addcmul_", "requires_grad_"}


def frozen_keys(program: Program) -> set[str]:
    """Module keys (as written: ``model.neck``, ``self.encoder_k``) whose parameters the file takes out of the
    optimizer's hands: ``X.requires_grad_(False)``, or a loop over ``X.parameters()`` (alone or zipped with
    others) that sets ``requires_grad = False`` or updates the parameters itself (an EMA/momentum copy)."""
    out: set[str] = set()
    for call in program.index.of(ast.Call):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "requires_grad_":
            arg = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "requires_grad"), None)
            if isinstance(arg, ast.Constant) and arg.value is False:
                key = receiver_key(f.value)
                if key:
                    out.add(key)
    for loop in program.index.of(ast.For, ast.AsyncFor):
        owners = [
            receiver_key(n.func.value) for n in ast.walk(loop.iter)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("parameters", "named_parameters")
        ]
        owners = [k for k in owners if k]
        if not owners:
            continue
        if any(_freezes_or_updates(node) for stmt in loop.body for node in ast.walk(stmt)):
            out.update(owners)
    return out


def _freezes_or_updates(node: ast.AST) -> bool:
    if isinstance(node, ast.Assign):
        for t in node.targets:
            if isinstance(t, ast.Attribute) and t.attr == "requires_grad" and isinstance(node.value, ast.Constant) and node.value.value is False:
                return True
            if isinstance(t, ast.Attribute) and t.attr == "data":
                return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MANUAL_UPDATES:
        return True
    return False


def is_frozen(key: str, frozen: set[str]) -> bool:
    """Is module ``key`` (or a module around it) among ``frozen`` (``model.neck`` for ``self.neck`` too)?"""
    last = key.rsplit(".", 1)[-1]
    for k in frozen:
        if k == key or key.startswith(k + ".") or k.rsplit(".", 1)[-1] == last and k.startswith(("self.", key.split(".", 1)[0] + ".")):
            return True
    return False


__all__ = [
    "Attribute", "CONTAINER", "CONTAINERS", "LAYER", "ModuleTables", "NONE", "PARAMETER", "PARAMETERLESS", "PASSED",
    "OptimizerBuild", "PLAIN", "UNKNOWN", "frozen_keys", "is_frozen", "optimizer_builds", "parameter_roots",
]


def _frozen_table(program: Program, node: ast.AST) -> bool:
    """``self.x = nn.Embedding.from_pretrained(t[, freeze=True])``: a lookup table that is not trained."""
    value = getattr(node, "value", None)
    value = K.unwrap_moves(value) if value is not None else None
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "from_pretrained"):
        return False
    parts = (program.imports.qualify(value.func) or "").split(".")
    if parts[-2:-1] not in (["Embedding"], ["EmbeddingBag"]) or ".".join(parts[:-2]) not in ("torch.nn", "nn"):
        return False
    freeze = next((kw.value for kw in value.keywords if kw.arg == "freeze"), value.args[1] if len(value.args) > 1 else None)
    return freeze is None or (isinstance(freeze, ast.Constant) and freeze.value is True)


def _a_number(node: ast.AST) -> bool:
    """``self.n = self.table.weight.numel()``, ``len(x)``, ``int(...)``: a number, never a parameter."""
    value = getattr(node, "value", None)
    if not isinstance(value, ast.Call):
        return False
    f = value.func
    return (isinstance(f, ast.Attribute) and f.attr in ("numel", "size", "item", "dim", "nelement")) or (
        isinstance(f, ast.Name) and f.id in ("len", "int", "float", "round", "max", "min")
    )
