"""``doctor probe``: run a training script for a few steps under instrumentation and report what only a run shows.

Kept free of torch imports: the CLI imports this module at start-up for every command.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Optional

import click

from doctor.probe.options import DEFAULTS, DEVICES, RECIPES, OptionsError, ProbeOptions, parse_recipe

if TYPE_CHECKING:
    from doctor.core.findings import Finding

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


@click.command(context_settings={"ignore_unknown_options": False, "help_option_names": ["-h", "--help"]})
@click.argument("script", type=click.Path(dir_okay=False))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULTS.steps, show_default=True, help="Optimizer steps to observe before stopping the script.")
@click.option("--device", type=click.Choice(list(DEVICES)), default=DEFAULTS.device, show_default=True,
              help="cpu hides GPUs from the script; cuda requires one.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.timeout, show_default=True,
              help="Seconds before the script is killed (each run of it).")
@click.option("--recipe", default=None, metavar="NAMES",
              help=f"Karpathy's recipe as checks: a comma-separated list of {', '.join(RECIPES)}, or all. "
                   "overfit-batch and lr-range each run the script once more.")
@click.option("--recipe-steps", type=click.IntRange(min=4), default=DEFAULTS.recipe_steps, show_default=True,
              help="Optimizer steps of each recipe run of its own (overfit-batch, lr-range).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="html: one self-contained file with charts (use with --output).")
@click.option("--with-static", is_flag=True,
              help="Also run the static checker on the script and the local modules it imports, and link its findings to the run.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None, help="Write the report to a file.")
@click.option("--sample-every", type=click.IntRange(min=1), default=DEFAULTS.sample_every, show_default=True,
              help="Full statistics on steps 0, 1, 2 and every N-th step.")
@click.option("--quiet", "-q", is_flag=True, help="Do not pass the script's own output through (to stderr).")
@click.option("--color/--no-color", default=None, help="Colour text output (default: on a terminal).")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None, metavar="N",
              help="Distributed mode: run the script on N ranks of this node under torch.distributed.run (torchrun), "
                   "the probe in every rank, and add the cross-rank checks.")
@click.option("--nnodes", default=None, metavar="N|MIN:MAX", help="torchrun --nnodes (multi-node; with --nproc-per-node).")
@click.option("--node-rank", type=click.IntRange(min=0), default=None, help="torchrun --node-rank (static rendezvous).")
@click.option("--rdzv-backend", default=None, help="torchrun --rdzv-backend (e.g. c10d).")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="torchrun --rdzv-endpoint.")
@click.option("--master-addr", default=None, help="torchrun --master-addr (static rendezvous).")
@click.option("--master-port", type=click.IntRange(min=1, max=65535), default=None, help="torchrun --master-port.")
def probe(script: str, script_args: tuple[str, ...], steps: int, device: str, timeout: float, recipe: Optional[str],
          recipe_steps: int, fmt: str, with_static: bool, output: Optional[str], sample_every: int, quiet: bool,
          color: Optional[bool], nproc_per_node: Optional[int], nnodes: Optional[str], node_rank: Optional[int],
          rdzv_backend: Optional[str], rdzv_endpoint: Optional[str], master_addr: Optional[str],
          master_port: Optional[int]) -> None:
    """Run SCRIPT for a few optimizer steps and check what only a run shows.

    The script runs unmodified as __main__ in a child process, with SCRIPT_ARGS (put them after `--`).
    Its output goes to stderr; the report to stdout (or --output). Exit 0 when no check fails, 1 when one
    does or the script crashed, timed out or never trained, 2 on usage errors.

    With --nproc-per-node N the script runs under torch.distributed.run, one probed child per rank, and the
    report merges the ranks and adds rank-sync, data-sharding and rank-skew.
    """
    from doctor.report import probe as report
    from doctor.probe.runner import ProbeUsageError, run_probe

    if not os.path.isfile(script):
        click.echo(f"doctor: error: no such script: {script}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        options = ProbeOptions(steps=steps, device=device, timeout=timeout, sample_every=sample_every,
                               recipe=parse_recipe(recipe), recipe_steps=recipe_steps, nproc_per_node=nproc_per_node,
                               nnodes=nnodes, node_rank=node_rank, rdzv_backend=rdzv_backend,
                               rdzv_endpoint=rdzv_endpoint, master_addr=master_addr, master_port=master_port).validate()
    except OptionsError as exc:
        click.echo(f"doctor: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        result = run_probe(script, list(script_args), options, echo=None if quiet else sys.stderr)
    except ProbeUsageError as exc:
        click.echo(f"doctor: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    use_colour = color if color is not None else (output is None and sys.stdout.isatty())
    exit_code = result.exit_code
    if with_static:
        from doctor.report.merged import render_merged

        findings, errors = static_findings_for(script)
        text, static_failed = render_merged(script, result, findings, errors, fmt, colour=use_colour)
        exit_code = max(exit_code, 1 if static_failed else 0)
    elif fmt == "json":
        text = report.render_json(result)
    elif fmt == "html":
        from doctor.report.html import render_html

        text = render_html(result.to_dict())
    else:
        text = report.render_text(result, colour=use_colour)
    if output:
        from doctor.core.fsutil import atomic_write_text

        atomic_write_text(output, text + "\n")
    else:
        click.echo(text)
    sys.exit(exit_code)


def static_findings_for(script: str) -> tuple[list["Finding"], list[tuple[str, str]]]:
    """Default static rules (with the script's own configuration) on the script and its local modules."""
    from doctor.lint.config import resolve_settings
    from doctor.lint.engine import check_files
    from doctor.analysis.localmods import local_modules
    from doctor.lint.registry import select_rules

    settings = resolve_settings([script], None)
    rules = select_rules(settings.select, settings.ignore, settings.extend_select)
    from doctor.report.merged import display

    files = [display(p) for p in local_modules(script)]
    result = check_files(files, settings, rules, jobs=1)
    return result.findings, result.errors
