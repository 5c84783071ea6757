"""The probe's options and their defaults, in one place.

The command line builds a ``ProbeOptions`` (its click defaults read this class), the runner validates it and
hands it to each child process as one JSON string (``--options``); the child reads it back with
``ProbeOptions.from_json``. Nothing else spells a default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

DEVICES = ("auto", "cpu", "cuda")

#: Karpathy's recipe, as probe checks. ``overfit-batch`` and ``lr-range`` each need a run of their own (the
#: script is run again in that mode); ``input-independent`` and ``batch-independence`` are experiments on the
#: first batch of the normal run.
RECIPES = ("overfit-batch", "input-independent", "batch-independence", "lr-range")
#: Recipe checks that are experiments inside the normal run (a few extra forward/backward passes at step 0).
IN_RUN_RECIPES = ("input-independent", "batch-independence")
#: Recipe checks that need their own run of the script, in this order.
OWN_RUN_RECIPES = ("overfit-batch", "lr-range")

#: Run modes of one child process.
NORMAL, OVERFIT, LR_RANGE = "normal", "overfit-batch", "lr-range"
MODES = (NORMAL, OVERFIT, LR_RANGE)


class OptionsError(ValueError):
    """Options that cannot run (the CLI turns this into a usage error, exit 2)."""


def parse_recipe(text: str | None) -> tuple[str, ...]:
    """``"overfit-batch,lr-range"`` or ``"all"`` -> the recipe names, in canonical order."""
    if not text:
        return ()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if "all" in names:
        return RECIPES
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise OptionsError(f"unknown recipe {', '.join(unknown)} (choose from {', '.join(RECIPES)} or all)")
    return tuple(r for r in RECIPES if r in names)


@dataclass(frozen=True)
class ProbeOptions:
    """Everything that decides how the script is probed."""

    #: Optimizer steps to observe before the script is stopped: enough for a trend, short enough to be cheap.
    steps: int = 20
    #: ``cpu`` hides GPUs from the script, ``cuda`` requires one, ``auto`` leaves the choice to the script.
    device: str = "auto"
    #: Seconds before a run is stopped (each run of the script gets this budget).
    timeout: float = 300.0
    #: Full statistics on steps 0, 1, 2 and every N-th step; the other steps only count.
    sample_every: int = 5
    #: Recipe checks to run (see ``RECIPES``).
    recipe: tuple[str, ...] = ()
    #: Steps of each recipe run of its own (``overfit-batch``, ``lr-range``).
    recipe_steps: int = 60
    #: The LR range test sweeps the learning rate geometrically from ``lr_min`` to ``lr_max``.
    lr_min: float = 1e-7
    lr_max: float = 10.0
    #: What this child run does: the normal run, or one of the recipe runs of its own.
    mode: str = NORMAL
    #: Experiments on the first batch to run inside this child (the in-run recipe checks requested).
    experiments: tuple[str, ...] = field(default=())

    def validate(self) -> "ProbeOptions":
        if self.steps < 1:
            raise OptionsError("--steps must be at least 1")
        if self.sample_every < 1:
            raise OptionsError("--sample-every must be at least 1")
        if not self.timeout > 0:
            raise OptionsError("--timeout must be positive")
        if self.device not in DEVICES:
            raise OptionsError(f"--device must be one of {', '.join(DEVICES)}")
        if self.mode not in MODES:
            raise OptionsError(f"unknown probe mode {self.mode!r}")
        bad = [r for r in self.recipe if r not in RECIPES]
        if bad:
            raise OptionsError(f"unknown recipe {', '.join(bad)}")
        if self.recipe_steps < 4:
            raise OptionsError("--recipe-steps must be at least 4")
        if not 0 < self.lr_min < self.lr_max:
            raise OptionsError("the LR range must satisfy 0 < lr_min < lr_max")
        return self

    # ------------------------------------------------------------------ runs
    def normal_run(self) -> "ProbeOptions":
        """Options of the normal run: it also carries the in-run recipe experiments."""
        return replace(self, mode=NORMAL, experiments=tuple(r for r in self.recipe if r in IN_RUN_RECIPES))

    def recipe_runs(self) -> list["ProbeOptions"]:
        """Options of the runs of their own that the requested recipe needs (none without ``--recipe``)."""
        return [replace(self, mode=r, steps=self.recipe_steps, experiments=()) for r in OWN_RUN_RECIPES if r in self.recipe]

    # ------------------------------------------------------------------ the one serialisation
    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> "ProbeOptions":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**kwargs)


DEFAULTS = ProbeOptions()
