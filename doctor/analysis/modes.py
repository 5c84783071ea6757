"""Train/eval mode and gradient recording: evaluation functions, no_grad regions, dropout/batch-norm models.

Answers the questions the evaluation rules ask: is this function an evaluation (by its name or because it
puts a model in eval mode and never trains), does gradient recording stay off where it runs (its own
``with`` blocks, its decorators, or every same-file caller wrapping the call), and does a model that the
file builds contain layers whose behaviour depends on ``model.eval()`` (dropout, batch norm).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional

from doctor.analysis.index import nodes_under
from doctor.analysis.events import BACKWARD, EVAL, FORWARD, STEP, TRAIN, BuildState, Event, Stream, StreamBuilder
from doctor.analysis.modules import ModuleTables
from doctor.analysis.names import receiver_key

from doctor.analysis.program import Program

#: Function names that say "this evaluates": evaluate, validate, val_epoch, run_test, eval_step...
EVAL_FUNCTION = re.compile(
    r"^_*(eval|evaluate|evaluation|validate|validation|valid|val|test|testing|run_eval\w*|run_val\w*|run_test)$"
    r"|^_*(eval|evaluate|validate|val|valid|test)_(epoch|loop|one_epoch|model|step|all|dataset|loader|accuracy|acc|loss)$"
    r"|^_*(run|do|compute)_(eval|evaluation|validation|val|test)(_\w+)?$",
)
#: Hooks whose caller (Lightning, Ignite, HF) already disables gradients and switches modes.
FRAMEWORK_HOOKS = {
    "validation_step", "test_step", "predict_step", "validation_epoch_end", "test_epoch_end",
    "on_validation_epoch_end", "on_test_epoch_end", "evaluation_loop", "prediction_step",
}
_NO_GRAD_NAMES = {"no_grad", "inference_mode"}
#: Layers whose output differs between train and eval mode.
_MODE_LAYERS = re.compile(r"^(Dropout\d?d?|AlphaDropout|FeatureAlphaDropout|BatchNorm\dd|SyncBatchNorm|LazyBatchNorm\dd)$")
#: torchvision architectures built with batch norm or dropout.
_TORCHVISION_MODE_MODELS = re.compile(
    r"^(resnet|resnext|wide_resnet|vgg\d+_bn|densenet|mobilenet|efficientnet|inception|googlenet|shufflenet|mnasnet|regnet|alexnet)"
)


def disables_grad(expr: ast.AST, model: Program) -> bool:
    """``torch.no_grad()``, ``torch.inference_mode()``, ``torch.set_grad_enabled(False)`` (call or bare decorator)."""
    call = expr if isinstance(expr, ast.Call) else None
    func = call.func if call else expr
    name = (model.imports.qualify(func) or "").rsplit(".", 1)[-1]
    if name in _NO_GRAD_NAMES:
        return not (call and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is False)
    if name == "set_grad_enabled" and call and call.args:
        return isinstance(call.args[0], ast.Constant) and call.args[0].value is False
    return False


def decorated_no_grad(fn: ast.AST, model: Program) -> bool:
    """``@torch.no_grad()``, ``@torch.inference_mode()``, or a project wrapper of them (``@smart_inference_mode()``)."""
    for d in getattr(fn, "decorator_list", ()):
        if disables_grad(d, model):
            return True
        name = (model.imports.qualify(d.func if isinstance(d, ast.Call) else d) or "").rsplit(".", 1)[-1]
        if re.search(r"no_grad|inference_mode", name):
            return True
    return False


@dataclass
class EvalFunction:
    """A function that evaluates a model, and what it does."""

    fn: ast.AST
    events: tuple[Event, ...]
    #: Evaluation because of its name (``evaluate``), not only because it calls ``model.eval()``.
    by_name: bool

    @property
    def forwards(self) -> list[Event]:
        return [e for e in self.events if e.kind == FORWARD]


class Modes:
    """Evaluation functions of one file and where gradient recording is off."""

    def __init__(self, model: Program, streams: Callable[[], list[Stream]]) -> None:
        self.model = model
        #: The file's event streams (built lazily by the training-loop model).
        self.streams = streams

    @cached_property
    def call_sites(self) -> dict[str, list[ast.Call]]:
        """Same-file calls by called name (``evaluate(...)``, ``self.evaluate(...)``)."""
        out: dict[str, list[ast.Call]] = {}
        for node in self.model.index.scan(ast.Call):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name:
                    out.setdefault(name, []).append(node)
        return out

    def grad_disabled_at(self, node: ast.AST) -> bool:
        """Is ``node`` lexically inside a no_grad ``with`` block or a no_grad-decorated function?"""
        cur: Optional[ast.AST] = node
        parents = self.model.parents
        while cur is not None:
            parent = parents.get(id(cur))
            if isinstance(parent, (ast.With, ast.AsyncWith)) and any(cur is s for s in parent.body):
                if any(disables_grad(i.context_expr, self.model) for i in parent.items):
                    return True
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and decorated_no_grad(parent, self.model):
                return True
            cur = parent
        return False

    def callers_disable_grad(self, fn: ast.AST, _depth: int = 0) -> bool:
        """Every same-file call of ``fn`` runs with gradients off (and there is at least one)."""
        sites = self.call_sites.get(getattr(fn, "name", ""), [])
        if not sites or _depth > 2:
            return False
        for site in sites:
            if self.grad_disabled_at(site):
                continue
            caller = self.model.enclosing_function(site)
            if caller is self.model.tree or caller is fn or not self.callers_disable_grad(caller, _depth + 1):
                return False
        return True

    def callers_set_eval(self, fn: ast.AST, target: Optional[str], _depth: int = 0) -> bool:
        """Some same-file caller of ``fn`` (up to three calls up) calls ``.eval()`` before calling it
        (``model.eval(); evaluate(model)``), or switches modes explicitly (``model.train(False)``)."""
        if _depth > 2:
            return False
        for site in self.call_sites.get(getattr(fn, "name", ""), []):
            caller = self.model.enclosing_function(site)
            for node in ast.walk(caller):
                if (
                    isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "eval"
                    and getattr(node, "lineno", 0) <= site.lineno
                ):
                    return True
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "train" and node.args:
                    return True  # model.train(False) / model.train(mode)
            if caller is not self.model.tree and caller is not fn and self.callers_set_eval(caller, target, _depth + 1):
                return True
        return False

    def eval_mode_set_elsewhere(self, key: Optional[str]) -> bool:
        """``key.eval()`` (or ``.train(False)``) is called somewhere that does not train: at module level after
        loading weights, in a setup function... The author manages the mode; we cannot order it reliably."""
        last = (key or "").rsplit(".", 1)[-1]
        for node in self.model.index.scan(ast.Call):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr == "eval" and not node.args or node.func.attr == "train" and node.args:
                recv = receiver_key(node.func.value) or ""
                if recv == key or recv.rsplit(".", 1)[-1] == last:
                    fn = self.model.enclosing_function(node)
                    if fn is self.model.tree or not any(
                        isinstance(n, ast.Attribute) and n.attr == "backward" for n in ast.walk(fn)
                    ):
                        return True
        return False

    def parameters_frozen(self, key: Optional[str], at: ast.AST) -> bool:
        """``key.requires_grad_(False)`` (also inside a chain: ``net.eval().requires_grad_(False).to(dev)``) runs
        in the function around ``at`` before it, or the object's readable class holds no trainable parameter: the
        model's forward then records no graph of its own."""
        if not key:
            return False
        fn = self.model.enclosing_function(at)
        line = getattr(at, "lineno", 0)
        for call in self.model.index.within(fn, ast.Call):
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "requires_grad_") or call.lineno > line:
                continue
            if not (call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is False):
                continue
            base = call.func.value
            while isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute):
                base = base.func.value
            if receiver_key(base) == key:
                return True
        ctor = self.model.constructor_of(key, at)
        found = self.model.resolve_class(ctor.func) if ctor is not None else None
        # A module class with no trainable parameter (frozen lookup tables, buffers, numbers).
        return found is not None and self._module_tables.trains_nothing(*found)

    @cached_property
    def _module_tables(self) -> ModuleTables:
        return ModuleTables(self.model)

    def grad_disabled_globally(self, node: ast.AST) -> bool:
        """``torch.set_grad_enabled(False)`` as a statement in the module body or the function around ``node``."""
        scopes = [self.model.tree]
        fn = self.model.enclosing_function(node)
        if fn is not self.model.tree:
            scopes.append(fn)
        for scope in scopes:
            for stmt in scope.body:  # type: ignore[attr-defined]
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and disables_grad(stmt.value, self.model):
                    return True
        return False

    def stream_of(self, fn: ast.AST) -> tuple[Event, ...]:
        """Events of ``fn``'s body (helpers inlined), built even when the shared model skipped the function."""
        for s in self.streams():
            if s.owner is fn:
                return s.events
        builder = StreamBuilder(self.model)
        state = BuildState(cls=self.model.class_of(fn), stack=(id(fn),))
        return tuple(builder.build(fn.body, state))  # type: ignore[attr-defined]

    @cached_property
    def _functions_calling_eval(self) -> set[int]:
        """Ids of the functions whose body (nested functions included) calls ``something.eval()``."""
        out: set[int] = set()
        for node in self.model.index.scan(ast.Call):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "eval" and not node.args:
                cur = self.model.parents.get(id(node))
                while cur is not None:
                    if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        out.add(id(cur))
                    cur = self.model.parents.get(id(cur))
        return out

    @cached_property
    def eval_functions(self) -> list[EvalFunction]:
        """Functions that evaluate: named like one, or calling ``.eval()`` and never training."""
        out = []
        for fn in self.model.index.scan(ast.FunctionDef, ast.AsyncFunctionDef):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name in FRAMEWORK_HOOKS:
                continue
            if fn.name in ("forward", "__call__") or "train" in fn.name:
                continue  # a module's forward (teacher.eval() inside a training step), or training code
            by_name = bool(EVAL_FUNCTION.match(fn.name))
            if not (by_name or id(fn) in self._functions_calling_eval):
                continue
            events = self.stream_of(fn)
            if any(e.kind in (BACKWARD, STEP, TRAIN) for e in events):
                continue  # trains (or restores train mode): a training function with a validation part
            if not by_name and not any(e.kind == EVAL for e in events):
                continue
            if not by_name and not any(e.kind == FORWARD and e.loops for e in events):
                continue  # calls .eval() but runs no evaluation loop (export, tracing, one-off inference)
            if by_name and not self._passes_over_data(fn, events):
                continue  # `def test(): net = Net(); print(net(torch.randn(2, 3)).shape)`: a smoke test
            out.append(EvalFunction(fn, events, by_name))
        return out

    def _passes_over_data(self, fn: ast.AST, events: tuple[Event, ...]) -> bool:
        """An evaluation runs the model over data and measures the outputs: some forward takes an input that is
        not made up on the spot (``torch.randn``, ``torch.zeros``...), and it runs in a loop or its outputs feed
        a loss or a metric. A single forward on random tensors that prints a shape is not one."""
        forwards = [e for e in events if e.kind == FORWARD]
        real = [e for e in forwards if not self._made_up_inputs(e.node)]
        if not real:
            return False
        if any(e.loops for e in real):
            return True
        return any(
            isinstance(n, ast.Compare) or (isinstance(n, ast.Call) and _MEASURES.search(_callee_name(n)))
            for n in self.model.index.within(fn, ast.Compare, ast.Call)
        )

    def _made_up_inputs(self, call: ast.AST) -> bool:
        args = list(getattr(call, "args", ())) + [k.value for k in getattr(call, "keywords", ())]
        if not args:
            return False
        return all(self._made_up(a) for a in args)

    def _made_up(self, expr: ast.AST, depth: int = 0) -> bool:
        if isinstance(expr, ast.Constant):
            return True
        if isinstance(expr, ast.Call):
            q = self.model.imports.qualify(expr.func) or ""
            if q.startswith("torch.") and _RANDOM_TENSOR.match(q.rsplit(".", 1)[-1]):
                return True
            if isinstance(expr.func, ast.Attribute) and expr.func.attr in ("to", "cuda", "float", "half") and depth < 4:
                return self._made_up(expr.func.value, depth + 1)
            return False
        if isinstance(expr, ast.Name) and depth < 4:
            fn = self.model.enclosing_function(expr)
            values = [
                n.value for n in self.model.index.within(fn, ast.Assign)
                if any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)
            ]
            return bool(values) and all(self._made_up(v, depth + 1) for v in values)
        return False

    def enables_grad(self, fn: ast.AST) -> bool:
        """The function deliberately records gradients (saliency, attacks, test-time adaptation)."""
        memo = self.__dict__.setdefault("_enables_grad_memo", {})  # asked per stream and per function: walk each once
        if id(fn) not in memo:
            memo[id(fn)] = self._enables_grad(fn)
        return memo[id(fn)]

    def _enables_grad(self, fn: ast.AST) -> bool:
        for node in nodes_under(fn):  # any such node will do: the order of the walk does not matter
            if isinstance(node, ast.Call):
                q = self.model.imports.qualify(node.func) or ""
                name = q.rsplit(".", 1)[-1]
                if name in ("enable_grad", "grad", "requires_grad_", "backward", "vjp", "jacobian", "hessian"):
                    return True
                if name == "set_grad_enabled" and not disables_grad(node, self.model):
                    return True
            if isinstance(node, ast.Attribute) and node.attr in ("requires_grad", "grad"):
                if isinstance(self.model.parents.get(id(node)), (ast.Assign, ast.Compare)) or isinstance(node.ctx, ast.Store):
                    return True
        return False

    # -- models whose behaviour depends on the mode ---------------------------------------------------
    @cached_property
    def mode_dependent_classes(self) -> dict[str, str]:
        """Local nn.Module classes that contain dropout or batch norm (directly or through another local class)."""
        classes = {n.name: n for n in self.model.index.scan(ast.ClassDef) if isinstance(n, ast.ClassDef)}
        found: dict[str, str] = {}
        for _ in range(3):  # a few rounds so that a class built from another local class inherits its layers
            for name, cls in classes.items():
                if name in found:
                    continue
                layer = self._mode_layer_in(cls.body, found)
                if layer:
                    found[name] = layer
        return found

    def _mode_layer_in(self, nodes: list, known: dict[str, str]) -> Optional[str]:
        for stmt in nodes:
            for node in ast.walk(stmt):
                if not isinstance(node, ast.Call):
                    continue
                q = self.model.imports.qualify(node.func) or ""
                name = q.rsplit(".", 1)[-1]
                if _MODE_LAYERS.match(name) and (q.startswith("torch") or q.startswith("nn.") or q == name):
                    return name
                if name in known:
                    return known[name]
                if name == "dropout" and any(k.arg == "training" for k in node.keywords):
                    return "dropout"
        return None

    def mode_layer_of(self, key: Optional[str]) -> Optional[str]:
        """The dropout/batch-norm layer that makes model ``key``'s output depend on its mode, if known."""
        info = self.model.info(key)
        if info is None or not isinstance(info.node, ast.Call):
            return None
        q = info.ctor
        name = q.rsplit(".", 1)[-1]
        if name in self.mode_dependent_classes:
            return self.mode_dependent_classes[name]
        if name == "Sequential":
            return self._mode_layer_in([info.node], self.mode_dependent_classes)
        if q.startswith("torchvision.models") and _TORCHVISION_MODE_MODELS.match(name):
            return "BatchNorm2d"
        return None


_RANDOM_TENSOR = re.compile(r"^(randn|rand|randint|randn_like|rand_like|zeros|ones|empty|full|zeros_like|ones_like|arange|linspace|tensor)$")
#: Calls that measure outputs: a loss, an accuracy, a metric update.
_MEASURES = re.compile(r"loss|criterion|accuracy|acc$|metric|score|argmax|topk|eq$|compute|update|evaluate|psnr|ssim|bleu|f1", re.I)


def _callee_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def loop_iterated(loop_node: ast.AST) -> Optional[ast.AST]:
    """What a ``for`` loop iterates, through ``enumerate``/``tqdm``/``iter`` wrappers."""
    it = getattr(loop_node, "iter", None)
    for _ in range(4):
        if isinstance(it, ast.Call) and it.args:
            f = it.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("enumerate", "tqdm", "iter", "track", "progress_bar", "Bar", "islice", "trange_iter", "auto"):
                it = it.args[0]
                continue
        break
    return it


def iterated_key(loop_node: ast.AST) -> Optional[str]:
    it = loop_iterated(loop_node)
    return receiver_key(it) if it is not None else None


__all__ = [
    "EVAL_FUNCTION", "EvalFunction", "Modes", "decorated_no_grad", "disables_grad", "iterated_key",
    "loop_iterated", "report_node", "report_node_in",
]


def report_node(ev: Event, other: Optional[Event] = None) -> ast.AST:
    """Where to report ``ev``: the call site at which its inlining path leaves ``other``'s (or ``ev`` itself).

    Streams inline same-file helpers, and a module-level ``main()`` call inlines a whole script, so the same
    event shows up in several streams; this picks one stable node for all of them.
    """
    shared = 0
    theirs = other.via if other is not None else ev.via
    while shared < len(ev.via) and shared < len(theirs) and ev.via[shared] is theirs[shared]:
        shared += 1
    if ev.foreign and shared >= ev.local_via:
        return ev.anchor
    return ev.via[shared] if shared < len(ev.via) else ev.node


def report_node_in(ev: Event, region: ast.AST) -> ast.AST:
    """The innermost of ``ev``'s call sites (or ``ev`` itself) that lies inside ``region`` (a loop)."""
    local = (*ev.via[: ev.local_via], ev.node) if ev.foreign else (*ev.via, ev.node)
    inside = [n for n in local if _within(n, region)]
    return inside[0] if inside else ev.anchor


def _within(node: ast.AST, region: ast.AST) -> bool:
    start, end = getattr(region, "lineno", 0), getattr(region, "end_lineno", 0) or 0
    line = getattr(node, "lineno", -1)
    return start <= line <= end
