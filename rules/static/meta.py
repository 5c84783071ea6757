"""Pseudo-rules about the input itself rather than the training code."""

from __future__ import annotations

from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class SyntaxErrorRule(Rule):
    """Reported by the engine when a file does not parse; the other files are still checked."""

    name = "syntax-error"
    code = "DR000"
    severity = Severity.ERROR
    summary = "The file could not be parsed as Python, so nothing in it was checked."
    why = "A file that does not parse cannot be checked; doctor reports it instead of skipping it silently."
    known_problems = """
        Reported once per file, at the position where Python's parser gave up; nothing else in the file is
        checked, and the other files are. Files that mention nothing doctor looks for (no `torch`, `backward`,
        `optim`, `nn.`...) are skipped before parsing, so their syntax errors are not reported. The file is
        parsed by the Python running doctor: syntax newer than that Python is reported as an error. In notebooks
        IPython magics and shell lines are blanked first.
    """
    bad = """
        import torch


        def train(model, loader:
            pass
    """
    good = """
        import torch


        def train(model, loader):
            pass
    """
    fires = ("import torch\ndef train(:\n    pass\n",)
    silent = ("import torch\ndef train():\n    pass\n",)

    def check(self, ctx):
        return ()


class UnusedSuppression(Rule):
    """Reported by the engine for `# noqa: DR...` / `# doctor: ignore[...]` comments that suppress nothing."""

    name = "unused-suppression"
    code = "DR001"
    severity = Severity.INFO
    default_enabled = False
    summary = "A suppression comment names a doctor rule that reports nothing on that line."
    why = (
        "Stale suppressions hide future problems: once the code is fixed, the comment silently swallows the next "
        "real finding on that line."
    )
    known_problems = """
        Only doctor's own codes (`DR...`) and rule names are judged: a bare `# noqa` and codes of other linters
        (`# noqa: E501`) are never reported; a bare `# doctor: ignore` that suppresses nothing is. A suppression
        is judged against the rules that ran: one naming a rule left out of the run (by `--select`, `--ignore`
        or the config) is reported as unused, so enable this rule in runs that select every rule you suppress
        (it is off by default). Suppressions in files skipped before parsing (they mention nothing doctor looks
        for) are not seen.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()  # noqa: DR101
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """
    fires = ("import torch\nx = 1  # noqa: DR101\n", "import torch\nx = 1  # doctor: ignore[missing-zero-grad]\n")
    silent = ("import torch\nx = 1  # noqa: E501\n", "import torch\nx = 1  # noqa\n")

    def check(self, ctx):
        return ()
