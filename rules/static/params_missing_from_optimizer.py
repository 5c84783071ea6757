"""params-missing-from-optimizer: a trainable part of the model is not in any parameter group of the optimizer."""

from __future__ import annotations

import ast
import os
from typing import Optional

from doctor.analysis.modules import (
    CONTAINER, LAYER, PARAMETER, ModuleTables, OptimizerBuild, frozen_keys, is_frozen, optimizer_builds, parameter_roots,
)
from doctor.analysis.names import receiver_key
from doctor.analysis.order import runs_after
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

_TRAINABLE = (LAYER, PARAMETER, CONTAINER)


class ParamsMissingFromOptimizer(Rule):
    name = "params-missing-from-optimizer"
    code = "DR804"
    severity = Severity.ERROR
    summary = "The optimizer's parameter groups leave out a trainable part of the model, or a layer is added to the model after the optimizer was built."
    why = """
        An optimizer updates exactly the tensors it was given. Parameter groups written out by hand
        (`[{"params": model.backbone.parameters()}, {"params": model.head.parameters(), "lr": 1e-3}]`) silently
        drop any part that is not listed: a neck, a projection, a `cls_token`. That part still takes part in the
        forward pass and receives gradients, so nothing errors and the loss still falls, but its weights stay at
        their initial values for the whole run. The same happens when a layer is assigned to the model after the
        optimizer was built (`model.fc = nn.Linear(512, 10)` to replace a head): the new layer is not in the
        optimizer, and the old head's weights are updated instead.
    """
    known_problems = """
        Parameter groups are judged when the optimizer's argument is read off completely (`X.parameters()` of
        parts of one model, lists of parameters named one by one, lists built earlier in the function) and names at
        least two parts of the same model; one part alone (fine-tuning only a head) is taken as deliberate, and a
        part given by index or slice (`model.head[:6]`) counts as the whole part. The
        model's class must be readable (this file or a local module, found through assignments, callers and
        annotations): its attributes holding a layer with parameters, a container of layers or a trainable
        `nn.Parameter`,
        that its `forward` (or a method `forward` calls) reads outside `torch.no_grad()`, must each be covered by a
        group of this optimizer, of another optimizer of the file, or an `add_param_group` call. Parts frozen in
        this file or in the model's file (`requires_grad_(False)`, a loop setting `requires_grad = False`) or
        updated by hand (an EMA/momentum copy in a loop over their parameters) are left out; freezing done in
        another file, through a config or `named_parameters()` name filters, is not seen and can make the rule
        speak on a deliberate exclusion. A layer assigned to the model (`model.X = nn.Linear(...)`) later in the same
        function that built the optimizer is reported unless the optimizer is rebuilt or given the layer with
        `add_param_group` afterwards.
    """
    bad = """
        import torch
        from torch import nn


        class Detector(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
                self.neck = nn.Conv2d(32, 32, 1)
                self.head = nn.Conv2d(32, 5, 1)

            def forward(self, x):
                return self.head(torch.relu(self.neck(self.backbone(x))))


        model = Detector()
        optimizer = torch.optim.SGD(
            [
                {"params": model.backbone.parameters(), "lr": 1e-3},
                {"params": model.head.parameters(), "lr": 1e-2},
            ],
            momentum=0.9,
        )
        for step in range(100):
            x, target = torch.randn(4, 3, 32, 32), torch.randn(4, 5, 32, 32)
            loss = nn.functional.mse_loss(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn


        class Detector(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
                self.neck = nn.Conv2d(32, 32, 1)
                self.head = nn.Conv2d(32, 5, 1)

            def forward(self, x):
                return self.head(torch.relu(self.neck(self.backbone(x))))


        model = Detector()
        optimizer = torch.optim.SGD(
            [
                {"params": model.backbone.parameters(), "lr": 1e-3},
                {"params": list(model.neck.parameters()) + list(model.head.parameters()), "lr": 1e-2},
            ],
            momentum=0.9,
        )
        for step in range(100):
            x, target = torch.randn(4, 3, 32, 32), torch.randn(4, 5, 32, 32)
            loss = nn.functional.mse_loss(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    fires = (
        # A head replaced after the optimizer was built.
        """
import torch
import torchvision
model = torchvision.models.resnet18(weights="DEFAULT")
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
model.fc = torch.nn.Linear(model.fc.in_features, 10)
""",
        # A ViT-style class token left out of the groups.
        """
import torch
from torch import nn
class ViT(nn.Module):
    def __init__(self, dim=192, depth=4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(dim, 3, batch_first=True) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)
    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.blocks(x)[:, 0])
model = ViT()
optimizer = torch.optim.AdamW([
    {"params": model.patch.parameters()},
    {"params": model.blocks.parameters()},
    {"params": model.head.parameters(), "lr": 1e-3},
], lr=3e-4)
""",
    )
    silent = (
        # The missing part is frozen.
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
    def forward(self, x):
        return self.head(self.body(self.stem(x)))
model = Net()
model.stem.requires_grad_(False)
optimizer = torch.optim.Adam([{"params": model.body.parameters()}, {"params": model.head.parameters(), "lr": 1e-2}])
""",
        # Only the head is trained: one part alone is a deliberate choice.
        """
import torch
model = build_model()
optimizer = torch.optim.SGD(model.classifier.parameters(), lr=0.01)
""",
        # Two optimizers cover the model between them (a GAN-style split).
        """
import torch
from torch import nn
class AE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 2)
        self.dec = nn.Linear(2, 8)
        self.disc = nn.Linear(8, 1)
    def forward(self, x):
        return self.dec(self.enc(x)), self.disc(x)
model = AE()
opt_ae = torch.optim.Adam([{"params": model.enc.parameters()}, {"params": model.dec.parameters()}])
opt_d = torch.optim.Adam(model.disc.parameters())
""",
        # The head is replaced before the optimizer is built.
        """
import torch
import torchvision
model = torchvision.models.resnet18(weights="DEFAULT")
model.fc = torch.nn.Linear(model.fc.in_features, 10)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
""",
    )

    def check(self, ctx):
        text = ctx.source.text
        if "parameters" not in text:
            return
        m = ctx.model
        builds = optimizer_builds(m)
        if not builds:
            return
        additions = _param_group_additions(m)
        frozen = frozen_keys(m)
        for b in builds:
            if b.complete and not b.factory:
                # Keys are names of one function: only optimizers and `add_param_group` calls there cover them.
                fn = m.enclosing_function(b.call)
                covered = set()
                for other in builds:
                    if m.enclosing_function(other.call) is fn:
                        covered |= other.roots
                for call, roots in additions:
                    if m.enclosing_function(call) is fn:
                        covered |= roots
                yield from self._groups(ctx, m, b, covered, frozen)
            yield from self._added_after(ctx, m, b)

    def _groups(self, ctx, m, b: OptimizerBuild, covered: set[str], frozen: set[str]):
        parents: dict[str, set[str]] = {}
        for r in b.roots:
            if "." in r:
                parent, attr = r.rsplit(".", 1)
                parents.setdefault(parent, set()).add(attr.split("[", 1)[0])  # `model.head[:6]` is part of `head`
        for parent, attrs in parents.items():
            if len(attrs) < 2 or any(parent == c or parent.startswith(c + ".") for c in covered):
                continue
            node = _node_of(b.call, parent)
            ref = m.values.module_of(node) if node is not None else None
            if ref is None or ref.cls is None:
                continue
            tables = ModuleTables(ref.program)
            reads = tables.forward_reads(ref.cls)
            if reads is None:
                continue
            have = {c[len(parent) + 1:].split(".", 1)[0].split("[", 1)[0] for c in covered if c.startswith(parent + ".")}
            frozen_here = frozen | (frozen_keys(ref.program) if ref.program is not m else set())
            missing = [
                a for a in tables.submodules(ref.cls).values()
                if a.holds in _TRAINABLE and a.name not in have and a.name in reads
                and not is_frozen(f"{parent}.{a.name}", frozen_here) and not is_frozen(f"self.{a.name}", frozen_here)
            ]
            if not missing:
                continue
            names = ", ".join(f"`{parent}.{a.name}`" + (f" ({a.what})" if a.what else "") for a in missing)
            listed = ", ".join(f"`{parent}.{x}`" for x in sorted(attrs))
            where = _where(m, ref.program, ref.cls)
            how = f" (inferred: {ref.how})" if ref.how else ""
            yield self.finding(
                ctx,
                b.call,
                f"{_label(b)} is given {listed} but not {names}, which `{ref.cls.name}.forward` ({where}) uses: "
                "those weights get gradients but are never updated; add them to a parameter group, or freeze them "
                f"with `requires_grad_(False)`{how}",
                severity=Severity.WARNING if ref.guess else None,
            )

    def _added_after(self, ctx, m, b: OptimizerBuild):
        fn = m.enclosing_function(b.call)
        tables = None
        for node in m.index.within(fn, ast.Assign) if fn is not m.tree else m.index.of(ast.Assign):
            if m.enclosing_function(node) is not fn or len(node.targets) != 1:
                continue
            target = node.targets[0]
            key = receiver_key(target) if isinstance(target, ast.Attribute) else None
            if not key or not any(key.startswith(r + ".") for r in b.roots):
                continue
            if not runs_after(m.index, b.call, node):
                continue
            tables = tables or ModuleTables(m)
            holds, what = tables.layer_kind(m, node.value)
            if holds not in _TRAINABLE:
                continue
            if _rebuilt_or_extended(m, b, node):
                continue
            root = next(r for r in sorted(b.roots) if key.startswith(r + "."))
            yield self.finding(
                ctx,
                node,
                f"`{key}` gets a new {'`' + what + '`' if what else 'layer'} after {_label(b)} was built from "
                f"`{root}.parameters()` (line {b.call.lineno}): the optimizer never updates the new layer's weights; "
                "build the optimizer after changing the model, or `add_param_group` the new layer",
            )


def _label(b: OptimizerBuild) -> str:
    return f"`{b.key}`" if b.key else "the optimizer"


def _param_group_additions(m) -> list[tuple[ast.Call, frozenset[str]]]:
    """Modules handed to an optimizer later: ``optimizer.add_param_group({"params": model.neck.parameters()})``."""
    out = []
    for call in m.index.of(ast.Call):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "add_param_group" and call.args:
            roots, _ = parameter_roots(m, call.args[0])
            out.append((call, roots))
    return out


def _rebuilt_or_extended(m, b: OptimizerBuild, site: ast.AST) -> bool:
    for info in m.objects.history.get(b.key, []):
        if isinstance(info.node, ast.Call) and runs_after(m.index, site, info.node):
            return True
    for call in m.index.of(ast.Call):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "add_param_group" and receiver_key(f.value) == b.key and runs_after(m.index, site, call):
            return True
    return False


def _node_of(call: ast.Call, key: str) -> Optional[ast.AST]:
    """An expression inside ``call`` that names the module ``key``."""
    for node in ast.walk(call):
        if isinstance(node, (ast.Name, ast.Attribute)) and receiver_key(node) == key:
            return node
    return None


def _where(m, program, cls: ast.ClassDef) -> str:
    if program is m or not program.path:
        return f"line {cls.lineno}"
    return f"{os.path.basename(program.path)}:{cls.lineno}"
