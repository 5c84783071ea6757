"""Which torch.nn layers a module holds, and which library constructor built an object.

``Layers(model)`` answers, for a module object or a module class we can read (this file or a local module),
which ``torch.nn`` layer classes it is built from: the calls and class references in the class's methods
(``self.bn = nn.BatchNorm1d(64)``, ``nn.Sequential(..., nn.LayerNorm(d))``, ``norm_layer=nn.BatchNorm2d``),
the layers of local submodule classes and of local builder functions it calls, and of its readable base
classes. torchvision architectures known to be built with batch norm, and Hugging Face ``transformers``
models (embeddings and layer norms), are answered from their constructor's name.

``built_by(model, expr)`` follows an expression back to the call that built the object it holds, through
local assignments, ``self.x`` attributes, parameters whose callers agree, device moves and wrappers
(``DDP(...)``, ``torch.compile(...)``, ``accelerator.prepare(...)``, ``get_peft_model(...)``).

Both know nothing of rules; anything not understood answers ``None`` (unknown), never "no layers".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from doctor.analysis import objects as K
from doctor.analysis.names import receiver_key

if TYPE_CHECKING:
    from doctor.analysis.program import Program

#: ``ImportTable.sources``: local name -> (module, level, attribute).
ImportSources = dict[str, tuple[str, int, Optional[str]]]

MAX_DEPTH = 4

#: Calls that hand back the module given as their first argument (or a wrapper that keeps its layers).
_WRAPPERS = {
    "DistributedDataParallel", "DataParallel", "DDP", "FullyShardedDataParallel", "FSDP", "compile", "prepare",
    "prepare_model", "get_peft_model", "PeftModel", "convert_sync_batchnorm", "setup", "setup_module", "wrap",
}  # fmt: skip
#: Methods that return the module they are called on.
_MOVES = {"to", "cuda", "cpu", "half", "float", "double", "bfloat16", "train", "eval", "to_empty", "requires_grad_"}
#: torchvision architectures built with batch norm (their blocks use BatchNorm2d).
_TORCHVISION_BN = re.compile(
    r"^(resnet|resnext|wide_resnet|vgg\d+_bn|densenet|mobilenet|efficientnet|inception|googlenet|shufflenet|mnasnet|regnet)"
)


@dataclass(frozen=True)
class Layer:
    """A torch.nn layer class a module is built with."""

    #: The class name: ``BatchNorm1d``, ``LayerNorm``, ``Embedding``.
    name: str
    #: The call (or class reference) in the source; None when known from a library constructor's name.
    node: Optional[ast.AST]
    #: The file holding ``node``.
    program: Optional["Program"]
    #: Known from a library architecture's name (``resnet50()``), not read off a definition.
    by_name: bool = False


@dataclass(frozen=True)
class Built:
    """The call that built an object, and the file it is in."""

    program: "Program"
    call: ast.Call

    @property
    def qualified(self) -> str:
        return self.program.imports.qualify(self.call.func) or ""


def built_by(model: "Program", expr: Optional[ast.AST], _depth: int = 0) -> Optional[Built]:
    """The call that built the object ``expr`` holds, through assignments, ``self`` attributes, agreeing
    callers, moves and wrappers. None when unknown or when several different objects may reach it."""
    if expr is None or _depth > MAX_DEPTH * 2:
        return None
    values = getattr(model, "values", None)
    if values is None:
        return None
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in _MOVES and isinstance(func, ast.Attribute):
            return built_by(model, func.value, _depth + 1)  # `Net().to(device)`, `model.cuda()`
        if name in _WRAPPERS:
            # `DDP(model, device_ids=...)`, `torch.compile(model)`, `accelerator.prepare(model)`
            return built_by(model, expr.args[0], _depth + 1) if expr.args else None
        return Built(model, expr)
    if isinstance(expr, ast.Name):
        value = values.value_of(expr)
        if value is not None:
            return built_by(model, value, _depth + 1)
        found: Optional[Built] = None
        for program, arg in values.argument_sites(expr):
            b = built_by(program, arg, _depth + 1)
            if b is None or (found is not None and b.call is not found.call):
                return None
            found = b
        return found
    if isinstance(expr, ast.Attribute):
        if isinstance(expr.value, ast.Name) and expr.value.id == "self":
            cls = model.class_of(model.enclosing_function(expr))
            assigned = values.self_attrs.get(cls or "", {}).get(expr.attr, [])
            return built_by(model, assigned[0], _depth + 1) if len(assigned) == 1 else None
        if expr.attr == "module":
            return built_by(model, expr.value, _depth + 1)
        key = receiver_key(expr)
        if key is not None:
            ctor = model.constructor_of(key, expr)
            return Built(model, ctor) if ctor is not None else None
    return None


def source_mentions(model: "Program", pattern: "re.Pattern[str]", text: Optional[str] = None) -> bool:
    """Does ``pattern`` occur in this file's source (``text``) or in a local module it imports directly (and, for
    a package ``__init__``, the modules it re-exports from)? A cheap test to run before questions that search
    the project (callers in other files). The modules read are recorded as consulted, so cached results
    notice when they change."""
    if text is not None and pattern.search(text):
        return True
    project = model.project
    if project is None or not model.path:
        return False
    todo: list[tuple[str, "ImportSources"]] = [(model.path, model.imports.sources)]
    seen: set[str] = set()
    while todo:
        importer, sources = todo.pop()
        for module, level, attr in sources.values():
            for name in ([f"{module}.{attr}" if module else attr, module] if attr else [module]):
                found = project.module_file(importer, name, level) if name or level else None
                if found is None:
                    continue
                if found not in seen:
                    seen.add(found)
                    body = project.consult(found)
                    if body is not None and pattern.search(body):
                        return True
                    if found.endswith("__init__.py") and importer == model.path:
                        package = project.program(found)
                        if package is not None:
                            todo.append((found, package.imports.sources))
                break
    return False


def built_like(model: "Program", expr: Optional[ast.AST]) -> Optional[Built]:
    """``built_by``; and for a parameter whose callers pass objects built by different calls of one class
    (``fit(TabularMLP(30), ...)`` and ``fit(TabularMLP(d), ...)``), one of those calls, standing for the class."""
    direct = built_by(model, expr)
    values = getattr(model, "values", None)
    if direct is not None or not isinstance(expr, ast.Name) or values is None:
        return direct
    found: Optional[Built] = None
    for program, arg in values.argument_sites(expr):
        b = built_by(program, arg)
        if b is None:
            return None
        if found is not None and b.call is not found.call:
            mine = program.resolve_class(b.call.func)
            theirs = found.program.resolve_class(found.call.func)
            same = mine is not None and theirs is not None and mine[1] is theirs[1]
            if not same and (mine is not None or theirs is not None or b.qualified != found.qualified):
                return None
        found = found or b
    return found


class Layers:
    """The torch.nn layers of modules, read from their definitions (cached per class)."""

    def __init__(self, model: "Program") -> None:
        self.model = model
        self._classes: dict[int, Optional[tuple[Layer, ...]]] = {}
        self._functions: dict[int, tuple[Layer, ...]] = {}

    # -- objects -----------------------------------------------------------------------------------------
    def of_object(self, expr: Optional[ast.AST]) -> Optional[tuple[Layer, ...]]:
        """The layers of the module ``expr`` holds; None when we cannot tell what it is."""
        built = built_like(self.model, expr)
        if built is None:
            return None
        return self.of_call(built.program, built.call)

    def of_call(self, program: "Program", call: ast.Call, _depth: int = 0) -> Optional[tuple[Layer, ...]]:
        """The layers of the module a constructor call builds (a torch.nn layer or container, a local class, a
        torchvision architecture known to use batch norm). None when the constructor is not understood."""
        q = program.imports.qualify(call.func) or ""
        last = q.rsplit(".", 1)[-1]
        if _is_torch_nn(q):
            out = [Layer(last, call, program)]
            for arg in [*call.args, *(kw.value for kw in call.keywords)]:
                out.extend(self._layers_in(program, arg, _depth + 1))
            return tuple(out)
        found = program.resolve_class(call.func)
        if found is not None:
            return self.of_class(found[0], found[1], _depth + 1)
        if q.startswith("torchvision.models"):
            if _TORCHVISION_BN.match(last):
                return (Layer("BatchNorm2d", None, None, by_name=True),)
            return None
        if q.startswith("transformers.") and (last in ("from_pretrained", "from_config") or last.endswith("Model") or "For" in last):
            return (Layer("Embedding", None, None, by_name=True), Layer("LayerNorm", None, None, by_name=True))
        return None

    def of_class(self, program: "Program", cls: ast.ClassDef, _depth: int = 0) -> Optional[tuple[Layer, ...]]:
        """The layers built anywhere in ``cls`` (and its readable bases), through local submodule classes and
        builder functions. None when the class is not an ``nn.Module``."""
        key = id(cls)
        if key in self._classes:
            return self._classes[key]
        if program.class_kind(cls) != K.MODEL:
            self._classes[key] = None
            return None
        self._classes[key] = ()  # recursion guard
        out: list[Layer] = []
        if _depth <= MAX_DEPTH:
            for prog, klass in program.class_bases(cls):
                out.extend(self._layers_in(prog, klass, _depth + 1))
        result = tuple(out)
        self._classes[key] = result
        return result

    # -- the layers mentioned in a piece of code ------------------------------------------------------------
    def _layers_in(self, program: "Program", root: ast.AST, depth: int) -> list[Layer]:
        out: list[Layer] = []
        if hasattr(root, "body"):
            calls = program.index.within(root, ast.Call, ast.Attribute)
        else:
            calls = [n for n in ast.walk(root) if isinstance(n, (ast.Call, ast.Attribute))]
        for node in calls:
            if isinstance(node, ast.Attribute):
                # `norm_layer=nn.BatchNorm2d`: a class reference that is called later.
                parent = program.parents.get(id(node))
                if isinstance(parent, ast.Call) and parent.func is node or isinstance(parent, ast.ClassDef):
                    continue  # the call itself (seen as a call), or a base class (`nn.Module`)
                q = program.imports.qualify(node) or ""
                if _is_torch_nn(q):
                    out.append(Layer(q.rsplit(".", 1)[-1], node, program))
                continue
            q = program.imports.qualify(node.func) or ""
            if _is_torch_nn(q):
                out.append(Layer(q.rsplit(".", 1)[-1], node, program))
                continue
            if depth > MAX_DEPTH or not isinstance(node.func, (ast.Name, ast.Attribute)):
                continue
            found = program.resolve(node.func) if isinstance(node.func, ast.Name) or q else None
            if found is None:
                continue
            prog, definition = found
            if isinstance(definition, ast.ClassDef):
                sub = self.of_class(prog, definition, depth + 1)
                if sub:
                    out.extend(sub)
            elif isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)) and definition is not root:
                out.extend(self._function_layers(prog, definition, depth + 1))
        return out

    def _function_layers(self, program: "Program", fn: ast.AST, depth: int) -> tuple[Layer, ...]:
        """Layers a builder function creates (``def conv_bn(c): return nn.Sequential(nn.Conv2d(...), ...)``)."""
        key = id(fn)
        if key not in self._functions:
            self._functions[key] = ()
            self._functions[key] = tuple(self._layers_in(program, fn, depth))
        return self._functions[key]


def _is_torch_nn(qualified: str) -> bool:
    """``torch.nn.BatchNorm1d``, ``nn.LayerNorm``: a class of torch.nn (not a function of torch.nn.functional)."""
    if not qualified.startswith(("torch.nn.", "nn.")) or ".functional" in qualified or qualified.startswith("nn.functional"):
        return False
    last = qualified.rsplit(".", 1)[-1]
    return last[:1].isupper() and not qualified.startswith(("torch.nn.utils", "torch.nn.parallel", "nn.utils", "nn.parallel", "torch.nn.init", "nn.init"))


__all__ = ["Built", "Layer", "Layers", "built_by", "built_like", "source_mentions"]
