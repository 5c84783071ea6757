"""The probe's options and their defaults, in one place.

The command line builds a ``ProbeOptions`` (its click defaults read this class), the runner validates it and
hands it to each child process as one JSON string (``--options``); the child reads it back with
``ProbeOptions.from_json``. Nothing else spells a default.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional

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

_NNODES = re.compile(r"[1-9][0-9]*(:[1-9][0-9]*)?")


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
    #: Distributed mode: processes per node, started by ``torch.distributed.run`` (None: one plain child).
    nproc_per_node: Optional[int] = None
    #: torchrun's own multi-node options, passed through (None: torchrun's default; a single node runs
    #: ``--standalone`` on a free port unless a rendezvous or master port is given).
    nnodes: Optional[str] = None
    node_rank: Optional[int] = None
    rdzv_backend: Optional[str] = None
    rdzv_endpoint: Optional[str] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None

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
        self._validate_launch()
        return self

    def _validate_launch(self) -> None:
        launch = {"--nnodes": self.nnodes, "--node-rank": self.node_rank, "--rdzv-backend": self.rdzv_backend,
                  "--rdzv-endpoint": self.rdzv_endpoint, "--master-addr": self.master_addr,
                  "--master-port": self.master_port}
        if self.nproc_per_node is None:
            given = [k for k, v in launch.items() if v is not None]
            if given:
                raise OptionsError(f"{', '.join(given)} need --nproc-per-node (the distributed mode)")
            return
        if self.nproc_per_node < 1:
            raise OptionsError("--nproc-per-node must be at least 1")
        if self.recipe:
            raise OptionsError("--recipe is not supported with --nproc-per-node: probe the script as one process "
                               "for Karpathy's recipe")
        if self.node_rank is not None and self.node_rank < 0:
            raise OptionsError("--node-rank must be at least 0")
        if self.nnodes is not None and not _NNODES.fullmatch(self.nnodes):
            raise OptionsError("--nnodes must be a number of nodes or a range MIN:MAX")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise OptionsError("--master-port must be a port number (1-65535)")

    @property
    def distributed(self) -> bool:
        """Launched through ``torch.distributed.run`` (one child per rank)."""
        return self.nproc_per_node is not None

    def torchrun_args(self) -> list[str]:
        """The launcher's own arguments (before the module it starts in every rank).

        A single node without a rendezvous or master port of the user's runs ``--standalone`` (a local
        rendezvous on a free port), so two probes on one machine never collide on torchrun's default port.
        No restarts: a failed rank is the report, not something to retry.
        """
        assert self.nproc_per_node is not None
        args = ["--nproc-per-node", str(self.nproc_per_node), "--max-restarts", "0", "--monitor-interval", "0.1"]
        single = self.nnodes in (None, "1", "1:1")
        if single and self.rdzv_endpoint is None and self.rdzv_backend is None and self.master_port is None \
                and self.master_addr is None:
            return args + ["--standalone"]
        for flag, value in (("--nnodes", self.nnodes), ("--node-rank", self.node_rank),
                            ("--rdzv-backend", self.rdzv_backend), ("--rdzv-endpoint", self.rdzv_endpoint),
                            ("--master-addr", self.master_addr), ("--master-port", self.master_port)):
            if value is not None:
                args += [flag, str(value)]
        return args

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
