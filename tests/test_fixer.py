"""Autofix: every fixable rule's examples round-trip (fixed, parses, re-checked clean, idempotent, CRLF kept),
and the CLI's --fix / --unsafe-fixes / --diff keep files safe (mode, encoding, atomic, read-only, races)."""

from __future__ import annotations

import ast
import os
import stat
import textwrap

import libcst
import pytest

from doctor.lint import fixer
from doctor.lint.config import Settings
from doctor.lint.engine import RunResult, check_file
from doctor.core.findings import Applicability, Edit, Fix
from doctor.lint.fixer import apply_fixes, fix_file
from doctor.lint.registry import Rule, static_rules

ALL_RULES = list(static_rules().values())
FIXABLE = [r for r in ALL_RULES if r.fixable is not None]
EXAMPLES = [(r, i, textwrap.dedent(code)) for r in FIXABLE for i, code in enumerate(r.fires)]


def _write(path, text: str, newline: str = "\n") -> str:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return str(path)


def _fixable_findings(path: str, rules) -> list:
    return [f for f in check_file(path, rules, Settings()).findings if f.fix is not None]


def _parses(data: bytes) -> None:
    text = data.decode("utf-8")
    ast.parse(text)
    libcst.parse_module(text)


# --- round trip over every fixable rule --------------------------------------------------------------


@pytest.mark.parametrize("rule", FIXABLE, ids=[r.name for r in FIXABLE])
def test_every_fixable_rule_has_an_example_that_produces_a_fix(rule, tmp_path):
    produced = []
    for i, code in enumerate(rule.fires):
        path = _write(tmp_path / f"ex{i}.py", textwrap.dedent(code))
        produced += [f for f in _fixable_findings(path, [rule]) if f.rule == rule.name]
    assert produced, (
        f"{rule.name} ({rule.code}) declares fixable={rule.fixable.value} but none of its `fires` examples "
        "produces a fix: add an example the fix handles"
    )
    assert all(f.fix.applicability is rule.fixable for f in produced), f"{rule.name}: fix applicability differs from `fixable`"


@pytest.mark.parametrize("rule,i,code", EXAMPLES, ids=[f"{r.name}-{i}" for r, i, _ in EXAMPLES])
def test_fix_round_trip(rule, i, code, tmp_path):
    path = _write(tmp_path / "train.py", code)
    before = [f for f in _fixable_findings(path, [rule]) if f.rule == rule.name]
    if not before:
        pytest.skip("this example yields no fix (coverage is asserted per rule above)")
    done = fix_file(path, [rule], Settings(), unsafe=True)
    assert not done.messages, done.messages
    assert done.applied >= 1 and done.fixed != done.original
    _parses(done.fixed)
    # Re-checked: the rule no longer reports the fixed places (fingerprints are keyed by the code on the line).
    (tmp_path / "train.py").write_bytes(done.fixed)
    after = [f for f in check_file(path, [rule], Settings()).findings if f.rule == rule.name]
    assert not [f for f in after if f.fix is not None], [(f.line, f.message) for f in after]
    assert not {f.fingerprint for f in before} & {f.fingerprint for f in after}
    # Idempotent: a second pass changes nothing.
    again = fix_file(path, [rule], Settings(), unsafe=True)
    assert again.fixed == again.original and again.applied == 0 and not again.messages
    # CRLF in, CRLF out, and the same fix.
    crlf = _write(tmp_path / "train_crlf.py", code, "\r\n")
    done_crlf = fix_file(crlf, [rule], Settings(), unsafe=True)
    assert done_crlf.fixed.replace(b"\r\n", b"\n").count(b"\r") == 0
    assert b"\n" not in done_crlf.fixed.replace(b"\r\n", b"")
    assert done_crlf.fixed.replace(b"\r\n", b"\n") == done.fixed


@pytest.mark.parametrize("rule,i,code", EXAMPLES, ids=[f"{r.name}-{i}" for r, i, _ in EXAMPLES])
def test_fixing_with_every_rule_on_converges_and_parses(rule, i, code, tmp_path):
    path = _write(tmp_path / "train.py", code)
    done = fix_file(path, ALL_RULES, Settings(), unsafe=True)
    assert not done.messages, done.messages
    _parses(done.fixed)
    (tmp_path / "train.py").write_bytes(done.fixed)
    assert fix_file(path, ALL_RULES, Settings(), unsafe=True).applied == 0


# --- the engine, with rules made up for the purpose -------------------------------------------------


class _Replace(Rule):
    """Base of test rules: replace the statement ``old`` (a whole line) by ``new``."""

    old = new = ""
    severity_ = None
    applicability = Applicability.SAFE
    summary = why = bad = good = "test"

    def check(self, ctx):
        for node in ast.walk(ctx.tree):
            if isinstance(node, ast.stmt) and ctx.segment(node) == self.old:
                edit = Edit(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, self.new)
                yield self.finding(ctx, node, f"{self.old} should be {self.new}", fix=Fix("test", self.applicability, (edit,)))


class OneToTwo(_Replace):
    name, code, fixable, old, new = "one-to-two", "DR901", Applicability.SAFE, "a = 1", "a = 2"


class TwoToThree(_Replace):
    name, code, fixable, old, new = "two-to-three", "DR902", Applicability.SAFE, "a = 2", "a = 3"


class OneToFour(_Replace):
    name, code, fixable, old, new = "one-to-four", "DR903", Applicability.SAFE, "a = 1", "a = 4"


class UnsafeBToC(_Replace):
    name, code, fixable, old, new = "b-to-c", "DR904", Applicability.UNSAFE, "b = 1", "c = 1"
    applicability = Applicability.UNSAFE


class Breaks(_Replace):
    name, code, fixable, old, new = "breaks-code", "DR905", Applicability.SAFE, "a = 1", "a = ("


class NeverSettles(Rule):
    name, code, fixable = "never-settles", "DR906", Applicability.SAFE
    summary = why = bad = good = "test"

    def check(self, ctx):
        node = ctx.tree.body[0]
        yield self.finding(ctx, node, "again", fix=Fix("t", Applicability.SAFE, (Edit(node.lineno, 0, node.lineno, 0, "# x\n"),)))


def _run(paths, rules, **kw):
    result = RunResult(files=[check_file(str(p), rules, Settings()) for p in paths])
    return apply_fixes(result, rules=rules, settings=Settings(), **kw)


def test_fixes_chain_over_rounds_in_one_run(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\n")
    out = _run([p], [OneToTwo, TwoToThree])
    assert p.read_text() == "import torch\na = 3\n"
    assert out.applied == 2 and out.changed_files == [str(p)]


def test_overlapping_fixes_apply_the_first_and_converge(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\n")
    out = _run([p], [OneToTwo, OneToFour])
    assert p.read_text() == "import torch\na = 2\n"  # DR901 sorts first; DR903 no longer fires after it
    assert out.applied == 1
    assert _run([p], [OneToTwo, OneToFour]).changed_files == []


def test_unsafe_fixes_wait_for_unsafe_flag(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\nb = 1\n")
    out = _run([p], [OneToTwo, UnsafeBToC])
    assert p.read_text() == "import torch\na = 2\nb = 1\n"
    assert out.unsafe_left == 1
    out = _run([p], [OneToTwo, UnsafeBToC], unsafe=True)
    assert p.read_text() == "import torch\na = 2\nc = 1\n" and out.unsafe_left == 0


def test_fix_that_would_not_parse_leaves_the_file_untouched(tmp_path):
    p = tmp_path / "t.py"
    p.write_bytes(b"import torch\nb = 1\na = 1\n")
    out = _run([p], [Breaks, UnsafeBToC], unsafe=True)
    assert p.read_bytes() == b"import torch\nb = 1\na = 1\n"
    assert out.changed_files == [] and out.applied == 0
    assert any(str(p) in m and "breaks-code" in m and "does not parse" in m for m in out.messages), out.messages
    assert not any("b-to-c" in m for m in out.messages)  # the good fix is not blamed


def test_injected_bad_fix_is_refused(tmp_path):
    """A FileResult whose finding carries a fix that breaks the code (as the brief asks: inject, call apply_fixes)."""
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\n")
    out = _run([p], [Breaks])
    assert p.read_text() == "import torch\na = 1\n" and not out.changed_files
    assert out.messages and "breaks-code" in out.messages[0]


def test_fix_that_never_settles_is_not_written(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("import torch\n")
    out = _run([p], [NeverSettles])
    assert p.read_text() == "import torch\n"
    assert any("did not settle" in m and "never-settles" in m for m in out.messages)


def test_file_changed_by_another_process_is_not_overwritten(tmp_path, monkeypatch):
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\n")
    real = fixer.fix_file

    def racing(path, *args, **kw):
        done = real(path, *args, **kw)
        p.write_text("import torch\na = 1  # edited meanwhile\n")
        return done

    monkeypatch.setattr(fixer, "fix_file", racing)
    out = _run([p], [OneToTwo])
    assert p.read_text() == "import torch\na = 1  # edited meanwhile\n"
    assert any("changed on disk" in m for m in out.messages) and not out.changed_files


def test_no_write_computes_the_diff_only(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\n")
    out = _run([p], [OneToTwo], write=False)
    assert p.read_text() == "import torch\na = 1\n"
    assert "-a = 1\n+a = 2\n" in out.diff and out.applied == 1


def test_bom_and_symlink_are_kept(tmp_path):
    real = tmp_path / "real.py"
    real.write_bytes(b"\xef\xbb\xbfimport torch\na = 1\n")
    link = tmp_path / "link.py"
    link.symlink_to(real)
    _run([link], [OneToTwo])
    assert link.is_symlink()
    assert real.read_bytes() == b"\xef\xbb\xbfimport torch\na = 2\n"


def test_insert_after_a_last_line_without_newline(tmp_path):
    p = tmp_path / "t.py"
    p.write_bytes(b"import torch\nfor x, y in loader:\n    loss_fn(model(x), y).backward()\n    opt.step()")
    rule = static_rules()["missing-zero-grad"]
    done = fix_file(str(p), [rule], Settings(), unsafe=True)
    _parses(done.fixed)
    assert b"    opt.zero_grad()\n    loss_fn" in done.fixed


# --- the CLI ---------------------------------------------------------------------------------------

TRAIN = """\
import torch
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    loss = loss_fn(model(x), y)  # the loss
    loss.backward()
    opt.step()
"""

FIXED = TRAIN.replace("    loss.backward()", "    opt.zero_grad()\n    loss.backward()")


def test_cli_fix_needs_unsafe_fixes_for_numerics(run_doctor, tmp_path):
    p = tmp_path / "train.py"
    p.write_text(TRAIN)
    r = run_doctor("check", str(p), "--fix", "--no-cache")
    assert r.returncode == 1, r.stderr
    assert p.read_text() == TRAIN
    assert "1 more fix available with --unsafe-fixes" in r.stderr
    assert "DR102 [*]" in r.stdout
    r = run_doctor("check", str(p), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.read_text() == FIXED
    assert "Fixed 1 problem in 1 file." in r.stderr
    r = run_doctor("check", str(p), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 0 and p.read_text() == FIXED and "Fixed" not in r.stderr


def test_cli_exit_code_after_fix_reflects_what_remains(run_doctor, tmp_path):
    p = tmp_path / "train.py"
    # The scheduler at the top of the epoch loop has no automatic fix; the missing zero_grad does.
    p.write_text(
        "import torch\n"
        "optimizer = torch.optim.AdamW(model.parameters())\n"
        "scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)\n"
        "for epoch in range(10):\n"
        "    scheduler.step()\n"
        "    for x, y in loader:\n"
        "        criterion(model(x), y).backward()\n"
        "        optimizer.step()\n"
    )
    r = run_doctor("check", str(p), "--fix", "--unsafe-fixes", "--no-cache", "--format", "json")
    assert r.returncode == 1, r.stderr
    assert "optimizer.zero_grad()" in p.read_text()
    assert '"scheduler-before-optimizer"' in r.stdout and '"missing-zero-grad"' not in r.stdout


def test_cli_diff_writes_nothing(run_doctor, tmp_path):
    p = tmp_path / "train.py"
    p.write_text(TRAIN)
    r = run_doctor("check", str(p), "--diff", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 1
    assert p.read_text() == TRAIN
    assert "+    opt.zero_grad()\n" in r.stdout and r.stdout.startswith("--- a/")
    r = run_doctor("check", str(p), "--diff", "--no-cache")
    assert r.returncode == 0 and r.stdout == "" and "1 more fix available with --unsafe-fixes" in r.stderr


def test_cli_read_only_file_is_left_with_a_message(run_doctor, tmp_path):
    p = tmp_path / "train.py"
    p.write_text(TRAIN)
    os.chmod(p, 0o444)
    r = run_doctor("check", str(p), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 1
    assert "read-only" in r.stderr and "Traceback" not in r.stderr
    assert p.read_text() == TRAIN


def test_cli_keeps_mode_encoding_and_crlf(run_doctor, tmp_path):
    p = tmp_path / "train.py"
    latin = "# -*- coding: latin-1 -*-\n# entraîné sur les données\n" + TRAIN
    p.write_bytes(latin.replace("\n", "\r\n").encode("latin-1"))
    os.chmod(p, 0o751)
    r = run_doctor("check", str(p), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    want = ("# -*- coding: latin-1 -*-\n# entraîné sur les données\n" + FIXED).replace("\n", "\r\n").encode("latin-1")
    assert p.read_bytes() == want
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o751
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".doctor-")]  # no temp file left behind


def test_cli_never_writes_a_file_that_does_not_decode(run_doctor, tmp_path):
    p = tmp_path / "train.py"
    data = ("# caf\udce9\n" + TRAIN).encode("utf-8", "surrogateescape")  # a stray latin-1 byte in a UTF-8 file
    p.write_bytes(data)
    r = run_doctor("check", str(p), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 1
    assert p.read_bytes() == data


class InsertsWithLF(Rule):
    """A rule author who wrote "\\n" instead of the file's newline: the fixer still writes CRLF into a CRLF file."""

    name, code, fixable = "inserts-with-lf", "DR908", Applicability.SAFE
    summary = why = bad = good = "test"

    def check(self, ctx):
        for node in ctx.tree.body:
            if ctx.segment(node) == "a = 1" and "b = 0" not in ctx.source.text:
                edit = Edit(node.lineno, 0, node.lineno, 0, "# checked\nb = 0\n")
                yield self.finding(ctx, node, "t", fix=Fix("t", Applicability.SAFE, (edit,)))


def test_inserted_newlines_follow_the_file(tmp_path):
    p = tmp_path / "t.py"
    p.write_bytes(b"import torch\r\na = 1\r\n")
    done = fix_file(str(p), [InsertsWithLF], Settings(), unsafe=False)
    assert done.fixed == b"import torch\r\n# checked\r\nb = 0\r\na = 1\r\n"


def test_text_report_counts_safe_and_unsafe_fixes_apart():
    from doctor.core.findings import Finding, Severity
    from doctor.report.lint import render_text

    def finding(line, applicability):
        fix = Fix("t", applicability, (Edit(line, 0, line, 0, "x"),)) if applicability else None
        return Finding("t.py", line, 1, line, 2, "r", "DR999", Severity.ERROR, "m", fix=fix)

    both = render_text([finding(1, Applicability.SAFE), finding(2, Applicability.UNSAFE), finding(3, None)], [], colour=False, files=1)
    assert "t.py:1:1: DR999 [*] m [r]" in both and "t.py:3:1: DR999 m [r]" in both
    assert "[*] 1 fixable with `doctor check --fix` (1 more with `--fix --unsafe-fixes`)." in both
    unsafe_only = render_text([finding(2, Applicability.UNSAFE)], [], colour=False, files=1)
    assert "[*] 1 fixable with `doctor check --fix --unsafe-fixes`" in unsafe_only


class ReplaceSecondArgument(Rule):
    """Replaces `1` in `f("é", 1)`: edits are in characters, ast columns in UTF-8 bytes."""

    name, code, fixable = "replace-second-argument", "DR909", Applicability.SAFE
    summary = why = bad = good = "test"

    def check(self, ctx):
        for node in ast.walk(ctx.tree):
            if isinstance(node, ast.Call) and len(node.args) == 2 and ctx.segment(node.args[1]) == "1":
                arg = node.args[1]
                col, end = ctx.char_column(arg.lineno, arg.col_offset), ctx.char_column(arg.end_lineno, arg.end_col_offset)
                yield self.finding(ctx, arg, "t", fix=Fix("t", Applicability.SAFE, (Edit(arg.lineno, col, arg.end_lineno, end, "2"),)))


def test_edits_after_non_ascii_text_land_on_the_right_characters(tmp_path):
    p = tmp_path / "t.py"
    p.write_text('import torch\nf("données é", 1)  # ünïcode\n', encoding="utf-8")
    _run([p], [ReplaceSecondArgument])
    assert p.read_text(encoding="utf-8") == 'import torch\nf("données é", 2)  # ünïcode\n'


class OneToFive(_Replace):
    name, code, fixable, old, new = "one-to-five", "DR909", Applicability.SAFE, "a = 1", "a = 5"


class FlagsFive(Rule):
    """Reports `a = 5` and offers no fix: a fix that writes `a = 5` brings a finding that was not there."""

    name, code = "flags-five", "DR910"
    summary = why = bad = good = "test"

    def check(self, ctx):
        for node in ctx.tree.body:
            if ctx.segment(node) == "a = 5":
                yield self.finding(ctx, node, "five")


def test_a_fix_that_brings_another_rules_finding_is_not_written(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("import torch\na = 1\n")
    out = _run([p], [OneToFive, FlagsFive])
    assert p.read_text() == "import torch\na = 1\n" and not out.changed_files
    assert any("would bring new findings of flags-five" in m for m in out.messages), out.messages
    # Findings that a fix only moves (or a chain that ends clean) are fine: see the chaining test above.
    assert _run([p], [OneToTwo, TwoToThree]).changed_files == [str(p)]
