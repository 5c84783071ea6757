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
    bad = "def train(:\n    pass"
    good = "def train():\n    pass"
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
    bad = "import torch\nx = 1  # noqa: DR101"
    good = "import torch\nx = 1"
    fires = ("import torch\nx = 1  # noqa: DR101\n", "import torch\nx = 1  # doctor: ignore[missing-zero-grad]\n")
    silent = ("import torch\nx = 1  # noqa: E501\n", "import torch\nx = 1  # noqa\n")

    def check(self, ctx):
        return ()
