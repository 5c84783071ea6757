"""missing-seed: a training entry point never seeds its random number generators."""

from __future__ import annotations

import ast
import re

from doctor.analysis.events import BACKWARD, ENGINE_STEP, STEP
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Calls and keywords that seed: torch.manual_seed, seed_everything, set_seed, init_seeds, fix_random_seed...
_SEEDS = re.compile(r"seed", re.I)
_NOT_SEEDS = {"initial_seed", "get_seed", "seed_worker"}


class MissingSeed(Rule):
    name = "missing-seed"
    code = "DR902"
    severity = Severity.INFO
    default_enabled = False
    summary = "A training script never seeds torch (`torch.manual_seed`, `seed_everything`, `set_seed`...)."
    why = """
        Without a seed, weight initialisation, dropout masks and data order differ on every run, so two runs
        of the same commit give different curves and a regression cannot be told from noise. Seeding does not
        make GPU kernels fully deterministic, but it removes the largest source of run-to-run variance.
        This rule is off by default: enable it for repositories that promise reproducible runs.
    """
    known_problems = """
        Reported once per file that both runs a backward pass and steps an optimizer, at its `if __name__ ==
        "__main__":` block, or, without one, at its first top-level loop that runs a backward pass; library
        modules without either are not reported. Any call or keyword argument with `seed` in its name anywhere
        in the file counts as seeding, so `random.seed(0)` or `np.random.seed(0)` alone silences it although
        torch stays unseeded, and seeding done in another module is not seen (that case is reported).
    """
    bad = """
        import torch
        from torch import nn


        def train(model, loader, optimizer, loss_fn):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()


        if __name__ == "__main__":
            model = nn.Linear(20, 2)
            loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
            train(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())
    """
    good = """
        import torch
        from torch import nn


        def train(model, loader, optimizer, loss_fn):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()


        if __name__ == "__main__":
            torch.manual_seed(0)
            model = nn.Linear(20, 2)
            loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
            train(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())
    """
    fires = (
        """
import torch
def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
if __name__ == "__main__":
    model = Net()
    train(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
    )
    silent = (
        """
import torch
def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
if __name__ == "__main__":
    torch.manual_seed(0)
    train(Net(), loader, optimizer)
""",
        """
import torch
from utils import set_all_seeds
def main(args):
    set_all_seeds(args.seed)
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
if __name__ == "__main__":
    main(parse())
""",
        """
import lightning as L
L.seed_everything(42)
for batch in loader:
    optimizer.zero_grad()
    model(batch).loss.backward()
    optimizer.step()
""",
        """
import torch
def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
from transformers import Trainer, TrainingArguments
if __name__ == "__main__":
    trainer = Trainer(model=model, args=TrainingArguments("out", seed=1))
    trainer.train()
""",
    )

    def check(self, ctx):
        m = ctx.model
        main = _main_guard(m.tree)
        top_level = [s for s in m.streams if s.owner is m.tree]
        trains = any(e.kind in (BACKWARD,) for s in m.streams for e in s.events) and any(
            e.kind in (STEP, ENGINE_STEP) for s in m.streams for e in s.events
        )
        if not trains:
            return
        if main is None:
            # Top-level training: a module-level loop that runs backward.
            loops = [e for s in top_level for e in s.events if e.kind == BACKWARD and e.loops]
            if not loops:
                return
            anchor = loops[0].loops[0].node
        else:
            anchor = main.test
        if _seeds(m.tree):
            return
        yield self.finding(
            ctx,
            anchor,
            "this training entry point never seeds its random number generators: initialisation, dropout and data "
            "order change on every run; call `torch.manual_seed(seed)` (or `seed_everything(seed)`) first",
        )


def _main_guard(tree: ast.Module):
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare):
            left = stmt.test.left
            if isinstance(left, ast.Name) and left.id == "__name__":
                return stmt
    return None


def _seeds(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if _SEEDS.search(name) and name not in _NOT_SEEDS:
                return True
            if any(kw.arg and _SEEDS.search(kw.arg) for kw in node.keywords):
                return True
    return False
