"""Which object is what: optimizers, schedulers, GradScalers, models, loss functions, loaders.

Kinds come from constructors when the file builds the object (resolved through imports), from the
framework calls that hand objects back (``accelerator.prepare``, ``deepspeed.initialize``), from how an
object is used (``scaler.step(x)`` makes ``x`` an optimizer), and last from plausible names
(``optimizer``, ``lr_scheduler``) when the constructor is in another file.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterator, Optional

from doctor.analysis.names import ImportTable, call_arg, call_name, dotted_name, last_part, receiver_key

OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
MODEL = "model"
LOSS = "loss_fn"
LOADER = "loader"
SAMPLER = "sampler"
ACCELERATOR = "accelerator"  # Accelerate, Fabric: objects whose .backward() is a backward
ENGINE = "engine"  # DeepSpeed engine: backward, step and zero_grad in one object
DIST_OPTIMIZER = "dist_optimizer"  # torch.distributed.optim.DistributedOptimizer
OTHER = "other"
#: Built by a call we could not classify yet (``Net(...)``, ``make_schedule(...)``): see ``ObjectInfo.unverified``.
PENDING = "pending"

_TORCH_OPTIMIZERS = {
    "SGD", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSprop", "Rprop", "NAdam", "RAdam",
    "LBFGS", "SparseAdam", "ASGD", "Adafactor", "Muon",
}
ADAPTIVE_OPTIMIZERS = {"Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax", "SparseAdam"}

_OPT_NAME = re.compile(r"(^|_)(opt|optim|optimi[sz]er)s?($|_)|^optimi[sz]er|optimi[sz]er$|^opt[A-Z_]|optimizer[A-Z]", re.I)
_SCHED_NAME = re.compile(r"sched|^lr_?s$|warmup_?lr|lr_?decay", re.I)
_SCALER_NAME = re.compile(r"(^|_)(grad_?)?scaler$", re.I)
_LOSS_NAME = re.compile(r"^(criterion|criteria|loss_?fn|loss_?func(tion)?|lossfn|loss_?function|criterion_\w+|\w+_criterion|\w+_loss_?fn)$", re.I)
_MODEL_NAME = re.compile(r"^(model|net|network|module|encoder|decoder|backbone|classifier|generator|discriminator|net[A-Z_]\w*|netD|netG|model_\w+|\w+_model|\w+_net|actor|critic|policy|student|teacher)$")

LOSS_CLASSES = {
    "CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "MSELoss", "L1Loss", "SmoothL1Loss",
    "HuberLoss", "KLDivLoss", "CTCLoss", "MarginRankingLoss", "CosineEmbeddingLoss", "TripletMarginLoss",
    "MultiLabelSoftMarginLoss", "MultiMarginLoss", "PoissonNLLLoss", "GaussianNLLLoss", "SoftMarginLoss",
    "HingeEmbeddingLoss", "MultiLabelMarginLoss",
}
LOSS_FUNCTIONS = {
    "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "mse_loss",
    "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "ctc_loss", "margin_ranking_loss",
    "cosine_embedding_loss", "triplet_margin_loss", "poisson_nll_loss", "gaussian_nll_loss",
    "soft_margin_loss", "multilabel_soft_margin_loss", "hinge_embedding_loss",
}


#: Names of constructors or factories that may build an object of a project class (not `x = self.layer(x)`).
_MAYBE_PROJECT_CTOR = re.compile(r"^[A-Z]|^_*(create|build|make|get|init|setup|new)_")
#: Top-level packages whose classes and factories we know by name: their objects need no reading of a definition.
LIBRARIES = frozenset({
    "torch", "transformers", "timm", "lightning", "pytorch_lightning", "accelerate", "deepspeed", "diffusers",
    "torchvision", "apex", "bitsandbytes", "fairscale", "peft", "nn", "optim", "F", "np", "numpy",
})


@dataclass
class ObjectInfo:
    kind: str
    #: Qualified constructor, e.g. ``torch.optim.lr_scheduler.StepLR``.
    ctor: str = ""
    node: Optional[ast.AST] = None
    #: For schedulers: the key of the optimizer they drive. For optimizers: roots of their parameters.
    optimizer: Optional[str] = None
    param_roots: Optional[frozenset[str]] = None
    from_name_only: bool = False

    @property
    def ctor_name(self) -> str:
        return self.ctor.rsplit(".", 1)[-1]

    @property
    def is_plateau(self) -> bool:
        return self.ctor_name == "ReduceLROnPlateau"

    @property
    def foreign_scheduler_class(self) -> bool:
        """A scheduler built by a class that is neither torch's nor a known framework's."""
        if self.kind != SCHEDULER or not self.ctor:
            return False
        parts = self.ctor.split(".")
        if parts[0] in ("torch", "transformers", "lightning", "pytorch_lightning", "accelerate", "diffusers", "timm", "deepspeed"):
            return False
        # Factories (`build_lr_scheduler(cfg, opt)`) usually hand back torch schedulers.
        return self.ctor not in ("lightning.lr_schedulers",) and self.ctor_name[:1].isupper()

    @property
    def custom_scheduler(self) -> bool:
        """A scheduler-like object whose ``step()`` we do not know: a class of the file or of another local
        module that is not a torch LR scheduler (a Noam warm-up, a cycle scheduler setting the LR itself).

        When the class's source is out of reach, a torch-style name (``WarmUpLR``, ``WarmupLinearSchedule``,
        the well-known ``GradualWarmupScheduler``) counts as a torch scheduler; other names stay unknown.
        """
        if not self.foreign_scheduler_class or self.torch_subclass:
            return False
        return self.source_seen or not _TORCH_LIKE_SCHEDULER.search(self.ctor_name)

    torch_subclass: bool = False
    #: We read the class's definition (this file or a local module): its bases decided, not its name.
    source_seen: bool = False
    #: The kind was read off the callee's name (``build_lr_scheduler(...)``), or is unknown (``Net(...)``):
    #: when the callee is a function or class we can read, its definition decides (``ObjectTable.resolver``).
    unverified: bool = False


def classify_ctor(qualified: str, local_classes: dict[str, str]) -> Optional[str]:
    """The kind of object a call to ``qualified`` returns, when we can tell."""
    name = qualified.rsplit(".", 1)[-1]
    if name in local_classes:
        return local_classes[name]
    return _classify_qualified(qualified)


@lru_cache(maxsize=8192)
def _classify_qualified(qualified: str) -> Optional[str]:
    """``classify_ctor`` for a name that is no local class: a pure function of the name, asked thousands of
    times per big file for a few hundred names, so remembered."""
    parts = qualified.split(".")
    name = parts[-1]
    if ("lr_scheduler" in parts and (parts[0] == "torch" or name[:1].isupper())) or (parts[0] == "transformers" and "schedule" in name.lower()):
        return SCHEDULER  # not `self.lr_scheduler.step_update(...)`: a method of a scheduler returns a number
    if name in ("get_scheduler",) or re.match(r"get_\w*schedule", name):
        return SCHEDULER
    if name == "DistributedOptimizer":
        return DIST_OPTIMIZER
    if name in ("GradScaler", "ShardedGradScaler"):
        return SCALER
    if name in ("Accelerator", "Fabric"):
        return ACCELERATOR
    if name in LOSS_CLASSES:
        return LOSS
    if name == "DataLoader":
        return LOADER
    if name in ("DistributedSampler", "RandomSampler", "SequentialSampler", "BatchSampler", "WeightedRandomSampler"):
        return SAMPLER
    if (parts[0] == "torch" and "optim" in parts and name in _TORCH_OPTIMIZERS) or name in _TORCH_OPTIMIZERS - {"Muon"}:
        return OPTIMIZER
    if re.search(r"sched", name, re.I):
        return SCHEDULER
    if re.search(r"optimi[sz]er", name, re.I) or re.match(r"(create|build|get|make)_opt", name):
        return OPTIMIZER
    if parts[0] in ("torchvision", "timm") and "models" in parts or name in ("create_model",):
        return MODEL
    if name.startswith("AutoModel") or name.endswith("ForCausalLM") or name.endswith("ForSequenceClassification"):
        return MODEL
    if parts[0] == "torch" and "nn" in parts and name[:1].isupper() and not name.endswith("Loss"):
        # nn.Linear, nn.Sequential, DistributedDataParallel... all modules
        return MODEL
    if name in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel", "DDP", "FSDP", "compile"):
        return MODEL
    return None


def kind_from_name(key: str) -> Optional[str]:
    return _kind_of_name(last_part(key))


@lru_cache(maxsize=8192)
def _kind_of_name(name: str) -> Optional[str]:
    """``kind_from_name`` of a key's last part (pure, so remembered)."""
    if _SCALER_NAME.search(name):
        return SCALER
    if _SCHED_NAME.search(name):
        return SCHEDULER
    if _OPT_NAME.search(name) and not re.search(r"option|optional|opts?_?args|^opts$|config|cfg", name, re.I):
        return OPTIMIZER
    if _LOSS_NAME.match(name):
        return LOSS
    if _MODEL_NAME.match(name):
        return MODEL
    if name in ("accelerator", "fabric"):
        return ACCELERATOR
    if re.search(r"engine", name, re.I):
        return ENGINE
    return None


def _roots_of(expr: ast.AST) -> Optional[frozenset[str]]:
    """Module keys whose ``.parameters()`` feed an optimizer: ``model.parameters()``, lists, sums, param groups."""
    roots: set[str] = set()
    unknown = False
    for node in ast.walk(expr):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("parameters", "named_parameters"):
            key = receiver_key(node.func.value)
            if key:
                roots.add(key)
            else:
                unknown = True
    if not roots or unknown:
        return None
    return frozenset(roots)


@dataclass
class ObjectTable:
    objects: dict[str, ObjectInfo] = field(default_factory=dict)
    #: Every constructor-backed object a key was bound to, in source order: the same local name
    #: (`scheduler`) often holds different objects in different functions of one file.
    history: dict[str, list[ObjectInfo]] = field(default_factory=dict)
    #: ids of the nodes in ``history[key]``: a membership test per binding, not a scan (big generated files).
    _history_nodes: dict[str, set[int]] = field(default_factory=dict, repr=False, compare=False)

    #: Classes of the file that subclass an optimizer, a scheduler or a module (by name).
    local_classes: dict[str, str] = field(default_factory=dict)
    #: Refines an unverified object from the definition of its constructor (set by the program tables): returns
    #: the verified object, or None when the constructor cannot be read.
    resolver: Optional[Callable[[ObjectInfo], Optional[ObjectInfo]]] = None

    def _verified(self, key: str, info: ObjectInfo) -> Optional[ObjectInfo]:
        if not info.unverified:
            return None if info.kind == PENDING else info
        info.unverified = False
        found = self.resolver(info) if self.resolver is not None else None
        if found is not None:
            self.objects[key] = found
            for seen in self.history.values():
                for i, old in enumerate(seen):
                    if old is info:
                        seen[i] = found
            info = found
        return None if info.kind == PENDING else info

    def kind(self, key: Optional[str]) -> Optional[str]:
        if not key:
            return None
        info = self.objects.get(key)
        if info is not None:
            info = self._verified(key, info)
            if info is not None:
                return info.kind
        return kind_from_name(key)

    def get(self, key: Optional[str]) -> Optional[ObjectInfo]:
        info = self.objects.get(key) if key else None
        return self._verified(key, info) if info is not None else None  # type: ignore[arg-type]

    def verified(self, key: str, info: ObjectInfo) -> Optional[ObjectInfo]:
        """``info`` (an entry of ``history``) after its constructor was checked; None when it stays unknown."""
        return self._verified(key, info)

    def set(self, key: str, info: ObjectInfo, *, override: bool = False) -> None:
        if info.node is not None and not info.from_name_only:
            seen = self._history_nodes.setdefault(key, set())
            if id(info.node) not in seen:
                seen.add(id(info.node))
                self.history.setdefault(key, []).append(info)
        old = self.objects.get(key)
        if info.kind == PENDING and old is not None:
            return
        if old is None or override or (old.from_name_only and not info.from_name_only) or old.kind in (OTHER, PENDING):
            self.objects[key] = info


_PASS_THROUGH = {"prepare", "setup", "initialize", "prepare_model", "prepare_optimizer", "prepare_scheduler", "wrap", "setup_optimizers", "setup_module"}


def build_objects(tree: ast.AST, imports: ImportTable, index=None) -> ObjectTable:
    """One flow-insensitive pass over all assignments in the file."""
    if index is None:
        from doctor.analysis.index import NodeIndex

        index = NodeIndex(tree)
    table = ObjectTable()
    local_classes = table.local_classes = classes_by_kind(index, imports)
    assigns: list[tuple[list[ast.AST], ast.AST]] = []
    for node in index.of(ast.Assign, ast.AnnAssign, ast.With, ast.AsyncWith):
        if isinstance(node, ast.Assign):
            assigns.append((node.targets, node.value))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            assigns.append(([node.target], node.value))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    assigns.append(([item.optional_vars], item.context_expr))
    # Two rounds so that aliases (`opt = self.optimizer`) see kinds assigned later in the file.
    for _ in range(2):
        for targets, value in assigns:
            for target in targets:
                _record(table, target, value, imports, local_classes)
    _infer_from_usage(index, table)
    defined_here = {c.name for c in index.of(ast.ClassDef)}
    for info in table.objects.values():
        if info.kind == SCHEDULER and info.ctor_name in defined_here and "." not in info.ctor:
            info.source_seen = True
    return table


def _record(table: ObjectTable, target: ast.AST, value: ast.AST, imports: ImportTable, local_classes: dict[str, str]) -> None:
    if isinstance(target, (ast.Tuple, ast.List)):
        _record_tuple(table, target, value, imports, local_classes)
        return
    key = receiver_key(target)
    if key is None:
        return
    info = _info_of(value, table, imports, local_classes)
    if info is None and isinstance(value, ast.Call) and kind_from_name(key) == SCHEDULER:
        # `scheduler = NoamWarmup(opt)`: a class that is not a torch scheduler (custom_scheduler tells).
        q = imports.qualify(unwrap_moves(value).func) or ""  # type: ignore[attr-defined]
        if q[:1] and q.rsplit(".", 1)[-1][:1].isupper():
            info = ObjectInfo(SCHEDULER, ctor=q, node=value, unverified=True)
    if info is None and _NOT_AN_OBJECT(value):
        # A list, an array, a number: whatever its name says (`lr_schedule = [...]`), not an object we model.
        info = ObjectInfo(OTHER)
    if info is not None:
        table.set(key, info, override=not info.from_name_only and info.kind != OTHER)
    elif isinstance(value, ast.Call) and key not in table.objects:
        # Built by something we do not recognise: remember that, so a name like `opt` (argparse options)
        # is not taken for an optimizer on its name alone.
        q = imports.qualify(value.func) or ""
        if q.endswith(("parse_args", "ArgumentParser", "Namespace", "load", "safe_load", "OmegaConf.create")):
            table.set(key, ObjectInfo(OTHER, ctor=q))
        else:
            inner = unwrap_moves(value)
            q = imports.qualify(inner.func) or "" if isinstance(inner, ast.Call) else ""  # type: ignore[attr-defined]
            if q and _MAYBE_PROJECT_CTOR.match(q.rsplit(".", 1)[-1]) and q.split(".")[0] not in LIBRARIES:
                # Maybe a class or factory of the project (`Net(...)`, `build_model(cfg)`): decided on demand.
                table.set(key, ObjectInfo(PENDING, ctor=q, node=inner, unverified=True))


_MOVES = {"to", "cuda", "cpu", "half", "float", "double", "bfloat16", "train", "eval", "requires_grad_", "to_empty", "share_memory"}


_ARRAY_FACTORIES = re.compile(r"^(np|numpy|math|torch)\.(linspace|arange|array|asarray|concatenate|cos|sin|exp|logspace|full|ones|zeros|tensor|cumsum|interp|geomspace)$")


def _NOT_AN_OBJECT(value: ast.AST) -> bool:
    """A value that is data, never an optimizer/scheduler/model object: literals, containers, arithmetic,
    numpy/torch array factories."""
    if isinstance(value, (ast.List, ast.Tuple, ast.Set, ast.ListComp, ast.SetComp, ast.GeneratorExp)):
        # Containers of numbers are data; a list of constructed objects (`[LambdaLR(o, f) for o in opts]`) is not.
        elts = [value.elt] if isinstance(value, (ast.ListComp, ast.SetComp, ast.GeneratorExp)) else value.elts
        return not any(isinstance(n, (ast.Call, ast.Name, ast.Attribute, ast.Starred)) for e in elts for n in ast.walk(e))
    if isinstance(value, (ast.JoinedStr, ast.BinOp, ast.Dict, ast.DictComp)):
        return True
    if isinstance(value, ast.Constant) and value.value is not None:
        return True
    if isinstance(value, ast.Call):
        dotted = dotted_name(value.func) or ""
        return bool(_ARRAY_FACTORIES.match(dotted))
    return False


def unwrap_moves(value: ast.AST) -> ast.AST:
    """``Net().to(device).train()`` -> ``Net()``: moves and mode switches return the same module."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _MOVES
        and isinstance(value.func.value, ast.Call)
    ):
        value = value.func.value
    return value


def _info_of(value: ast.AST, table: ObjectTable, imports: ImportTable, local_classes: dict[str, str]) -> Optional[ObjectInfo]:
    value = unwrap_moves(value)
    if isinstance(value, ast.Call):
        q = imports.qualify(value.func)
        if q:
            name = q.rsplit(".", 1)[-1]
            if name in _PASS_THROUGH and value.args and len(value.args) == 1:
                inner = receiver_key(value.args[0])
                if inner and table.kind(inner):
                    src = table.get(inner)
                    return ObjectInfo(table.kind(inner) or OTHER, ctor=src.ctor if src else "", node=value, optimizer=src.optimizer if src else None, param_roots=src.param_roots if src else None)
            if name in ("optimizers",) and q.startswith("self."):
                return ObjectInfo(OPTIMIZER, ctor="lightning.optimizers", node=value)
            if name in ("lr_schedulers",) and q.startswith("self."):
                return ObjectInfo(SCHEDULER, ctor="lightning.lr_schedulers", node=value)
            kind = classify_ctor(q, local_classes)
            if kind == SCHEDULER and name not in local_classes and q.split(".")[0] != "torch" and not _drives_something(value):
                # `create_named_schedule_sampler("uniform", diffusion)`: "schedule" in a name, but an LR scheduler
                # is built on an optimizer, and none is handed over.
                kind = None
            if kind is not None:
                info = ObjectInfo(kind, ctor=q, node=value, torch_subclass=name in local_classes, unverified=q.split(".")[0] not in LIBRARIES)
                if kind == OPTIMIZER:
                    first = value.args[0] if value.args else call_arg(value, "params")
                    info.param_roots = _roots_of(first) if first is not None else None
                elif kind == SCHEDULER:
                    first = value.args[0] if value.args else call_arg(value, "optimizer")
                    info.optimizer = receiver_key(first) if first is not None else None
                return info
    key = receiver_key(value)
    if key and key in table.objects:
        src = table.objects[key]
        return ObjectInfo(src.kind, ctor=src.ctor, node=src.node, optimizer=src.optimizer, param_roots=src.param_roots, from_name_only=src.from_name_only)
    return None


def _drives_something(call: ast.Call) -> bool:
    """Could this call hand an optimizer to what it builds? An argument that names one (``optimizer``,
    ``self.opt``, ``optimizers[0]``), a call or an unpacked ``*args``/``**kwargs`` (we cannot see inside)."""
    values = list(call.args) + [k.value for k in call.keywords]
    if any(k.arg is None for k in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args):
        return True
    for v in values:
        if isinstance(v, ast.Call):
            return True
        key = receiver_key(v) or ""
        if re.search(r"opt", key, re.I) or (isinstance(v, ast.Subscript) and re.search(r"opt", ast.unparse(v), re.I)):
            return True
    return False


def info_of(value: ast.AST, table: ObjectTable, imports: ImportTable) -> Optional[ObjectInfo]:
    """What object an expression builds or names, from its constructor (or None when we cannot tell)."""
    return _info_of(value, table, imports, table.local_classes)


def _record_tuple(table: ObjectTable, target: ast.AST, value: ast.AST, imports: ImportTable, local_classes: dict[str, str]) -> None:
    elts = target.elts  # type: ignore[attr-defined]
    if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(elts):
        for t, v in zip(elts, value.elts):
            _record(table, t, v, imports, local_classes)
        return
    if not isinstance(value, ast.Call):
        return
    q = imports.qualify(value.func) or ""
    name = q.rsplit(".", 1)[-1]
    if q.startswith("deepspeed") and name == "initialize":
        # model_engine, optimizer, dataloader, lr_scheduler = deepspeed.initialize(...)
        kinds = [ENGINE, ENGINE, LOADER, SCHEDULER]
        for t, kind in zip(elts, kinds):
            key = receiver_key(t)
            if key:
                table.set(key, ObjectInfo(kind, ctor=q, node=value), override=True)
        return
    if name in _PASS_THROUGH:
        # accelerator.prepare(model, optimizer, loader, scheduler) returns them in the same order.
        for t, arg in zip(elts, value.args):
            key, src_key = receiver_key(t), receiver_key(arg)
            if not key:
                continue
            src = table.get(src_key)
            kind = src.kind if src else (table.kind(src_key) or kind_from_name(key))
            if kind:
                table.set(
                    key,
                    ObjectInfo(kind, ctor=src.ctor if src else "", node=value, optimizer=src.optimizer if src else None, param_roots=src.param_roots if src else None, from_name_only=src is None),
                    override=src is not None,
                )


def kind_of_base(qualified: str) -> Optional[str]:
    """The kind of object a class is when it subclasses ``qualified`` (a base class's qualified name)."""
    bname = qualified.rsplit(".", 1)[-1]
    if bname == "Optimizer" or qualified.startswith("torch.optim.") and bname in _TORCH_OPTIMIZERS:
        return OPTIMIZER
    if bname in _TORCH_SCHEDULER_BASES:
        return SCHEDULER
    if bname in ("Module", "LightningModule", "Sequential", "ModuleList", "ModuleDict", "PreTrainedModel") or (
        qualified.startswith(("torch.nn.", "nn.")) and bname[:1].isupper() and not bname.endswith("Loss")
    ):
        return MODEL
    if bname.endswith("Loss") and qualified.startswith(("torch.nn.", "nn.")):
        return LOSS
    return None


def classes_by_kind(index, imports: ImportTable) -> dict[str, str]:
    """Classes defined in the file that subclass an optimizer, a scheduler or a module."""
    out: dict[str, str] = {}
    for node in index.of(ast.ClassDef):
        for base in node.bases:
            q = imports.qualify(base) or ""
            bname = q.rsplit(".", 1)[-1]
            if bname in ("Optimizer",) or q.startswith("torch.optim.") and bname in _TORCH_OPTIMIZERS:
                out[node.name] = OPTIMIZER
            elif bname in ("_LRScheduler", "LRScheduler", "LambdaLR"):
                out[node.name] = SCHEDULER
            elif bname in ("Module", "LightningModule") or bname in out and out[bname] == MODEL:
                out[node.name] = MODEL
    return out


def _infer_from_usage(index, table: ObjectTable) -> None:
    """``scaler.step(x)`` and ``scaler.unscale_(x)`` make ``x`` an optimizer; ``x.scale(loss)`` makes ``x`` a scaler."""
    for node in index.of(ast.Call):
        if not isinstance(node.func, ast.Attribute):
            continue
        recv = receiver_key(node.func.value)
        attr = node.func.attr
        if attr in ("unscale_",) and recv and node.args:
            table.set(recv, ObjectInfo(SCALER, from_name_only=True))
            arg = receiver_key(node.args[0])
            if arg and table.kind(arg) in (None, OPTIMIZER):
                table.set(arg, ObjectInfo(OPTIMIZER, from_name_only=True))
        elif attr == "step" and recv and node.args and table.kind(recv) == SCALER:
            arg = receiver_key(node.args[0])
            if arg and table.kind(arg) in (None, OPTIMIZER):
                table.set(arg, ObjectInfo(OPTIMIZER, from_name_only=True))


def qualified_call(call: ast.Call, imports: ImportTable) -> str:
    return imports.qualify(call.func) or call_name(call) or ""


__all__ = ["ObjectInfo", "ObjectTable", "build_objects", "classify_ctor", "kind_from_name", "dotted_name", "qualified_call"]


#: torch schedulers a project's own scheduler class may subclass.
_TORCH_SCHEDULER_BASES = {
    "_LRScheduler", "LRScheduler", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ExponentialLR",
    "CosineAnnealingLR", "OneCycleLR", "CyclicLR", "SequentialLR", "ChainedScheduler", "LinearLR", "ConstantLR",
    "PolynomialLR", "CosineAnnealingWarmRestarts",
}
_LOCAL_CLASS_CACHE: dict[str, dict[str, list[str]]] = {}


def _classes_in(path: str) -> dict[str, list[str]]:
    """Base-class names of every class in a local module (cached: several files import the same utils)."""
    if path not in _LOCAL_CLASS_CACHE:
        bases: dict[str, list[str]] = {}
        try:
            with open(path, "rb") as fh:
                tree = ast.parse(fh.read())
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    bases[node.name] = [(dotted_name(b) or "").rsplit(".", 1)[-1] for b in node.bases]
        except (OSError, SyntaxError, ValueError, RecursionError):
            pass
        _LOCAL_CLASS_CACHE[path] = bases
    return _LOCAL_CLASS_CACHE[path]


_TORCH_LIKE_SCHEDULER = re.compile(
    r"(LR|Schedule)$|^(GradualWarmupScheduler|CosineAnnealingWarmupRestarts|LinearWarmupCosineAnnealingLR|WarmupMultiStepLR)$"
)


def resolve_local_schedulers(table: ObjectTable, path: str) -> None:
    """A scheduler class imported from a module next to the file (`from utils import WarmUpLR`) is a torch
    scheduler when that module's class subclasses one. Unresolvable classes stay custom (we stay quiet)."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    for info in table.objects.values():
        if not info.foreign_scheduler_class or info.torch_subclass or info.source_seen or "." not in info.ctor:
            continue
        module, _, cls = info.ctor.rpartition(".")
        rel = module.replace(".", os.sep)
        for candidate in (os.path.join(folder, rel + ".py"), os.path.join(folder, rel, "__init__.py")):
            if os.path.isfile(candidate):
                seen: set[str] = set()
                name, classes = cls, _classes_in(candidate)
                info.source_seen = cls in classes
                # Follow subclasses defined in the same module (WarmupCosine(WarmupBase(LambdaLR))).
                while name in classes and name not in seen:
                    seen.add(name)
                    bases = classes[name]
                    if any(b in _TORCH_SCHEDULER_BASES for b in bases):
                        info.torch_subclass = True
                        break
                    name = next((b for b in bases if b in classes), "")
                break


def optimizer_hyperparameter(call: ast.Call, name: str, position: int) -> Iterator[ast.AST]:
    """Every value an optimizer constructor gets for ``name``: the keyword, the positional argument at
    ``position``, and the entries of per-parameter-group dicts (``[{"params": ..., "lr": 1e-4}]``)."""
    for kw in call.keywords:
        if kw.arg == name:
            yield kw.value
    if len(call.args) > position:
        yield call.args[position]
    groups = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "params"), None)
    if isinstance(groups, (ast.List, ast.Tuple)):
        for g in groups.elts:
            if isinstance(g, ast.Dict):
                for k, v in zip(g.keys, g.values):
                    if isinstance(k, ast.Constant) and k.value == name:
                        yield v
