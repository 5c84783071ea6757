"""The ``doctor`` command line. Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage or internal error."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

from doctor import __version__
from doctor.core.findings import Severity

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return tuple(out)


class _Group(click.Group):
    def main(self, *args, **kwargs):  # type: ignore[override]
        # click exits with 2 on usage errors already; anything unexpected becomes a one-line message + exit 2.
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_ERROR)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(EXIT_OK)
        except SystemExit:
            raise
        except Exception as exc:  # never a traceback for the user; DOCTOR_DEBUG=1 shows it
            if os.environ.get("DOCTOR_DEBUG"):
                raise
            click.echo(f"doctor: internal error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="doctor")
def main() -> None:
    """doctor: find silent PyTorch training bugs before and during training."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github", "sarif"]), default="text", show_default=True)
@click.option("--select", multiple=True, help="Rules to enable: names, codes, code prefixes or ALL (comma-separated).")
@click.option("--ignore", multiple=True, help="Rules to disable: names, codes or code prefixes.")
@click.option("--extend-select", multiple=True, help="Rules to enable on top of the selection.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None, help="Lowest severity that fails the run (default: error).")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when problems are found.")
@click.option("--statistics", is_flag=True, help="Count findings per rule and show the slowest rules.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="Config file (pyproject.toml or doctor.toml).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None, help="Write the report to a file.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--color/--no-color", default=None, help="Colour text output (default: on a terminal).")
@click.option("--fix", is_flag=True, help="Apply safe fixes in place.")
@click.option("--unsafe-fixes", is_flag=True, help="Also apply fixes that change training numerics (with --fix or --diff).")
@click.option("--diff", is_flag=True, help="Show the fixes as a unified diff; write nothing.")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None, help="Report only findings not recorded in this baseline file.")
@click.option("--write-baseline", type=click.Path(dir_okay=False), default=None, help="Record today's findings as the baseline and exit 0.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the result cache.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Cache folder (default: .doctor_cache, or $DOCTOR_CACHE_DIR).")
def check(
    paths: tuple[str, ...],
    fmt: str,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    extend_select: tuple[str, ...],
    fail_on: Optional[str],
    exit_zero: bool,
    statistics: bool,
    config: Optional[str],
    output: Optional[str],
    jobs: Optional[int],
    color: Optional[bool],
    fix: bool,
    unsafe_fixes: bool,
    diff: bool,
    baseline: Optional[str],
    write_baseline: Optional[str],
    no_cache: bool,
    cache_dir: Optional[str],
) -> None:
    """Check training scripts (files or folders, default: the current folder)."""
    from dataclasses import replace

    from doctor.report import lint as report
    from doctor.lint.config import ConfigError, resolve_settings
    from doctor.lint.discovery import discover, display_path
    from doctor.lint.engine import check_files, failing
    from doctor.lint.registry import select_rules, validate_selectors

    path_list = list(paths) or ["."]
    missing = [p for p in path_list if not os.path.exists(p)]
    if missing:
        for p in missing:
            click.echo(f"doctor: error: no such file or folder: {p}", err=True)
        sys.exit(EXIT_ERROR)
    try:
        settings = resolve_settings(path_list, config)
    except ConfigError as exc:
        click.echo(f"doctor: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    changes = {}
    if select:
        changes["select"] = _split(select)
    if ignore:
        changes["ignore"] = settings.ignore + _split(ignore)
    if extend_select:
        changes["extend_select"] = settings.extend_select + _split(extend_select)
    if fail_on:
        changes["fail_on"] = Severity.parse(fail_on)
    settings = replace(settings, **changes)
    use_cache = not no_cache and not statistics
    result = None
    files: Optional[list[str]] = None
    if use_cache and not (fix or diff):
        # Nothing changed since the last run: answer from the cache without importing a single rule
        # (importing the rules and the analysis is most of a warm run's time).
        from doctor.lint.cache import cached_run

        files = [display_path(p) for p in discover(path_list, settings)]
        result = cached_run(cache_dir, settings, files)
    if result is None:
        unknown = validate_selectors(settings.select + settings.ignore + settings.extend_select)
        if unknown:
            click.echo(f"doctor: error: unknown rule selector(s): {', '.join(unknown)} (see `doctor rules`)", err=True)
            sys.exit(EXIT_ERROR)
        rules = select_rules(settings.select, settings.ignore, settings.extend_select)
        if files is None:
            files = [display_path(p) for p in discover(path_list, settings)]
        cache = None
        if use_cache:
            from doctor.lint.cache import open_cache

            # --cache-dir, else $DOCTOR_CACHE_DIR, else the config's cache-dir, else .doctor_cache in the root.
            cache = open_cache(cache_dir, settings, rules)
        result = check_files(files, settings, rules, jobs=jobs, timing=statistics, cache=cache)
    if fix or diff:
        from doctor.lint.fixer import apply_fixes

        outcome = apply_fixes(result, unsafe=unsafe_fixes, write=fix and not diff, rules=rules, settings=settings)
        for message in outcome.messages:
            click.echo(message, err=True)
        if diff:
            if outcome.diff:
                click.echo(outcome.diff, nl=False)
            if outcome.unsafe_left:
                click.echo(f"{outcome.unsafe_left} more fix{'es' if outcome.unsafe_left != 1 else ''} available with --unsafe-fixes.", err=True)
            sys.exit(EXIT_FINDINGS if outcome.changed_files else EXIT_OK)
        if outcome.changed_files:
            # What remains after fixing is what we report and what the exit code reflects.
            result = check_files(files, settings, rules, jobs=jobs, cache=None)
            click.echo(f"Fixed {outcome.applied} problem{'s' if outcome.applied != 1 else ''} in {len(outcome.changed_files)} file{'s' if len(outcome.changed_files) != 1 else ''}.", err=True)
        if outcome.unsafe_left:
            n = outcome.unsafe_left
            click.echo(f"{n} more fix{'es' if n != 1 else ''} available with --unsafe-fixes.", err=True)
    findings = result.findings
    errors = result.errors
    if write_baseline:
        from doctor.lint.baseline import write_baseline as _write

        _write(write_baseline, findings)
        click.echo(f"Wrote a baseline of {len(findings)} finding{'s' if len(findings) != 1 else ''} to {write_baseline}.", err=True)
        sys.exit(EXIT_OK)
    if baseline:
        from doctor.lint.baseline import BaselineError, load_baseline

        try:
            findings = load_baseline(baseline).new_findings(findings)
        except BaselineError as exc:
            click.echo(f"doctor: error: {exc}", err=True)
            sys.exit(EXIT_ERROR)

    if fmt == "json":
        text = report.render_json(findings, errors, files=len(files))
    elif fmt == "github":
        text = report.render_github(findings, errors)
    elif fmt == "sarif":
        from doctor.catalog import pages

        text = report.render_sarif(findings, errors, pages())
    else:
        use_colour = color if color is not None else (output is None and sys.stdout.isatty())
        text = report.render_text(findings, errors, colour=use_colour, files=len(files))
    if statistics and fmt == "text":
        text = report.render_statistics(findings, result.rule_seconds()) + "\n\n" + text
    elif statistics:
        click.echo(report.render_statistics(findings, result.rule_seconds()), err=True)
    _emit(text, output)
    if exit_zero:
        sys.exit(EXIT_OK)
    if any(err.startswith("internal error") for _, err in errors):
        sys.exit(EXIT_ERROR)
    # A notebook that is not JSON could not be checked at all: like a syntax error, that fails the run.
    if any(err.startswith(("not a valid notebook", "cannot read")) for _, err in errors):
        sys.exit(EXIT_FINDINGS)
    sys.exit(EXIT_FINDINGS if failing(findings, settings.fail_on) else EXIT_OK)


def _emit(text: str, output: Optional[str]) -> None:
    if output:
        from doctor.core.fsutil import atomic_write_text

        atomic_write_text(output, text + ("\n" if text else ""))
    elif text:
        click.echo(text)


@main.command("rules")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Include the probe's runtime checks.")
def rules_cmd(fmt: str, show_all: bool) -> None:
    """List the rules: code, name, severity, default on/off, fixable (json: every rule's whole page)."""
    import json

    from doctor.catalog import pages

    infos = pages(runtime=show_all)
    if fmt == "json":
        click.echo(json.dumps([p.to_dict() for p in infos], indent=2, ensure_ascii=False))
        return
    if fmt == "markdown":
        click.echo("| code | name | severity | default | fix | what it catches |")
        click.echo("| --- | --- | --- | --- | --- | --- |")
        for i in infos:
            default = "on" if i.default_enabled else "off"
            click.echo(f"| {i.code} | `{i.name}` | {i.severity} | {default} | {i.fixable} | {i.summary} |")
        return
    click.echo(f"{'code':<7} {'name':<34} {'severity':<8} {'default':<7} {'fix':<6} summary")
    for i in infos:
        default = "on" if i.default_enabled else "off"
        click.echo(f"{i.code:<7} {i.name:<34} {i.severity:<8} {default:<7} {i.fixable:<6} {i.summary}")


@main.command()
@click.argument("rule")
def explain(rule: str) -> None:
    """Explain a rule or runtime check (by name or code): its documentation page."""
    from doctor.catalog import find
    from doctor.core.page import render, title

    page = find(rule)
    if page is None:
        click.echo(f"doctor: error: unknown rule {rule!r} (see `doctor rules --all`)", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"{title(page)}\n\n{render(page)}")


def _register_optional_commands() -> None:
    try:
        from doctor.cli.probe import probe
    except ImportError:
        return
    main.add_command(probe)


_register_optional_commands()
