"""Mutation mode of run.py: plant the core training-loop bugs into the corpus's real loops, measure recall.

Sites are found with ``ast`` (``.py`` files and notebooks' code cells). Each mutant is one edit of one file that
keeps every other line where it was (removed lines become blank lines), written into a scratch copy of that repo
(so local imports still resolve), checked with ``doctor check FILES --select RULE --jobs 1``. Mutants of
different files are checked in one doctor run. A mutant is *caught* only when the rule reports a line of the
planted site:

* scheduler-before-optimizer: a per-iteration ``S.step()`` of an LR scheduler that follows ``O.step()`` in the
  same loop body is moved to just before the statement holding ``O.step()``. Site: the moved lines and the
  optimizer step's line.
* missing-zero-grad: a gradient clearing (``X.zero_grad()``, ``p.grad = None``, ``p.grad.zero_()``, or a
  ``for p in ...:`` that only clears) in a training loop (or a step function) with backward() and an optimizer
  step is replaced by ``pass``. Site: the ``pass`` line and the optimizer step it cleared for.
* unscaled-accumulation-loss: ``loss / accum_steps`` (``loss = loss / n``, ``loss /= n``, ``(loss / n).backward()``,
  ``criterion(...) / n``, ``return loss / n``) loses the divide. Site: the edited statement and the backward()
  of the same scope.

Mutants that plant no bug (another clearing of the same gradients remains; a custom or explicitly-counted
scheduler; a detached value; no accumulation in that loop) are classified ``not-a-bug`` automatically, or by hand
in ``mutant_overrides.json`` (keyed like ``mutants.json``'s ``key``), and do not count.
"""

from __future__ import annotations

import ast
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OVERRIDES = os.path.join(HERE, "mutant_overrides.json")
RULES = {
    "scheduler-before-optimizer": "DR101",
    "missing-zero-grad": "DR102",
    "unscaled-accumulation-loss": "DR201",
}
LOOPS = (ast.For, ast.AsyncFor, ast.While)
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)

# ------------------------------------------------------------------------------------------------ programs


class Program:
    """One file as a Python program: lines of the program and, for notebooks, where each line lives."""

    def __init__(self, rel: str, raw: str):
        self.rel = rel
        self.notebook = rel.endswith(".ipynb")
        self.raw = raw
        self.where: list[tuple[int, int] | None] = []  # program line (0-based) -> (cell, 1-based line in cell)
        if self.notebook:
            self.nb = json.loads(raw)
            lines: list[str] = []
            self.cell_lines: dict[int, list[str]] = {}
            for index, cell in enumerate(self.nb.get("cells", [])):
                if cell.get("cell_type") != "code":
                    continue
                src = cell.get("source", "")
                src = "".join(src) if isinstance(src, list) else str(src)
                cl = src.splitlines()
                self.cell_lines[index] = cl
                first = next((x.strip() for x in cl if x.strip()), "")
                whole_magic = first.startswith("%%") and not re.match(r"%%(time|timeit|capture|prun)\b", first)
                for n, text in enumerate(cl):
                    s = text.strip()
                    blank = whole_magic or s.startswith(("%", "!")) or (s.endswith("?") and not s.startswith("#"))
                    lines.append("" if blank else text)
                    self.where.append((index, n + 1))
                lines.append("")
                self.where.append(None)
            self.lines = lines
        else:
            self.lines = raw.splitlines()
            self.where = [None] * len(self.lines)
        self.tree = ast.parse("\n".join(self.lines) + "\n")
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                child._parent = node  # type: ignore[attr-defined]

    def position(self, line: int) -> tuple[int | None, int]:
        """Program line (1-based) -> the (cell, line) doctor reports."""
        if not self.notebook:
            return (None, line)
        w = self.where[line - 1]
        return w if w else (None, line)

    def render(self, new_lines: list[str]) -> str:
        if not self.notebook:
            return "\n".join(new_lines) + ("\n" if self.raw.endswith("\n") else "")
        nb = json.loads(self.raw)
        cells = {i: list(v) for i, v in self.cell_lines.items()}
        for i, (old, new) in enumerate(zip(self.lines, new_lines)):
            if old != new and self.where[i]:
                c, n = self.where[i]
                cells[c][n - 1] = new
        for c, cl in cells.items():
            text = "\n".join(cl)
            src = nb["cells"][c].get("source", "")
            if isinstance(src, list):
                nb["cells"][c]["source"] = [x + "\n" for x in cl[:-1]] + ([cl[-1]] if cl else [])
            else:
                nb["cells"][c]["source"] = text
        return json.dumps(nb, indent=1)


def parents(node: ast.AST) -> list[ast.AST]:
    out = []
    while hasattr(node, "_parent"):
        node = node._parent  # type: ignore[attr-defined]
        out.append(node)
    return out


def innermost_loop(node: ast.AST) -> ast.AST | None:
    for p in parents(node):
        if isinstance(p, LOOPS):
            return p
        if isinstance(p, DEFS):
            return None
    return None


def enclosing_function(node: ast.AST) -> ast.AST | None:
    for p in parents(node):
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return p
        if isinstance(p, ast.ClassDef):
            return None
    return None


def walk_scope(scope: ast.AST):
    """Nodes under ``scope`` in source order, not descending into nested defs/classes/lambdas."""
    todo = list(reversed(list(ast.iter_child_nodes(scope))))
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, DEFS):
            continue
        todo.extend(reversed(list(ast.iter_child_nodes(node))))


def statement_of(node: ast.AST) -> ast.stmt:
    while not isinstance(node, ast.stmt):
        node = node._parent  # type: ignore[attr-defined]
    return node


def text(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # pragma: no cover
        return "?"


def whole_lines(prog: Program, stmt: ast.stmt) -> bool:
    """The statement owns its lines: nothing before it on its first line, only a comment after it."""
    first = prog.lines[stmt.lineno - 1]
    last = prog.lines[stmt.end_lineno - 1]
    if first[: stmt.col_offset].strip():
        return False
    rest = last[stmt.end_col_offset :].strip()
    return not rest or rest.startswith("#")


# ------------------------------------------------------------------------------------------------ recognisers

_SCHED_NAME = re.compile(r"(?<!pp_)(?<!noise_)sched(uler|ulers)?s?\b|lr_sched|_sched|sched_|lr_policy|warmup|lr_updater", re.I)
_SCHED_CALL = re.compile(r"lr_scheduler|Scheduler|LambdaLR|StepLR|OneCycle|Cosine|Schedule|Warmup|get_scheduler|LRPolicy", re.I)
_OPT_NAME = re.compile(r"(^|[._\[])(opt|optim|optimizer|optimiser|opt_?[a-z]|optimizer_?\w*|optim_?\w*)s?(\d*)([._\]\[]|$)", re.I)
_ACCUM = re.compile(r"accum|acc_steps|update_freq|micro|grad_acc|accumulate|n_acc|iters_to_acc", re.I)


def step_kind(call: ast.Call, sched_vars: set[str], opt_vars: set[str]) -> tuple[str, str] | None:
    """('opt'|'sched', receiver text) for ``X.step(...)`` calls we can classify."""
    f = call.func
    if not (isinstance(f, ast.Attribute) and f.attr == "step"):
        return None
    recv = text(f.value)
    if "scaler" in recv.lower() and call.args:
        return ("opt", text(call.args[0]))
    if recv in sched_vars or _SCHED_NAME.search(recv):
        return ("sched", recv)
    if recv in opt_vars or (_OPT_NAME.search(recv) and "sched" not in recv.lower()):
        return ("opt", recv)
    return None


def binding_sets(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound from scheduler / optimizer constructors anywhere in the file (``x = optim.AdamW(...)``)."""
    sched, opt = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            fn = text(node.value.func)
            for t in node.targets:
                name = text(t)
                if _SCHED_CALL.search(fn):
                    sched.add(name)
                elif re.search(r"optim\.|Adam|SGD|RMSprop|Adagrad|Lamb|Lion|build_optimizer|create_optimizer", fn):
                    opt.add(name)
    return sched, opt


def is_backward(call: ast.Call) -> bool:
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr in ("backward", "manual_backward"):
        return True
    return isinstance(f, ast.Name) and f.id == "backward"


def is_clearing(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "zero_grad":
            return True
        if node.func.attr == "zero_" and ".grad" in text(node.func.value):
            return True
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is None:
        return any(isinstance(t, ast.Attribute) and t.attr == "grad" for t in node.targets)
    return False


def _only_clearing(stmt: ast.stmt) -> bool:
    """A for/if whose statements only clear gradients (``for p in ps: p.grad = None``)."""
    found = False
    for node in ast.walk(stmt):
        if isinstance(node, ast.stmt) and not isinstance(node, (ast.For, ast.If)):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                if is_clearing(node.value):
                    found = True
                    continue
                if isinstance(node.value.func, ast.Attribute) and node.value.func.attr in ("detach_", "requires_grad_"):
                    continue
                return False
            if is_clearing(node):
                found = True
                continue
            return False
    return found


# ------------------------------------------------------------------------------------------------ sites


class Site:
    def __init__(self, prog: Program, rule: str, lo: int, hi: int, new_lines: list[str], accept: set[int], what: str):
        self.prog, self.rule, self.lo, self.hi = prog, rule, lo, hi
        self.new_lines = new_lines
        self.accept = accept  # program lines (1-based) where a report counts as a catch
        self.what = what
        self.status: str | None = None  # preset 'not-a-bug'
        self.reason = ""
        self.shape = ""

    @property
    def snippet(self) -> str:
        return self.prog.lines[self.lo - 1].strip()

    def key(self, repo: str) -> str:
        return f"{repo}|{self.prog.rel}|{self.rule}|{self.snippet}"

    def accept_positions(self) -> set[tuple[int | None, int]]:
        return {self.prog.position(n) for n in self.accept}

    def location(self) -> str:
        cell, line = self.prog.position(self.lo)
        return f"{self.prog.rel}" + (f" cell {cell}" if cell is not None else "") + f":{line}"


def _blank(lines: list[str], stmt: ast.stmt, replacement: str) -> list[str]:
    new = list(lines)
    indent = lines[stmt.lineno - 1][: stmt.col_offset]
    comment = ""
    new[stmt.lineno - 1] = indent + replacement + comment
    for n in range(stmt.lineno, stmt.end_lineno):
        new[n] = ""
    return new


def scheduler_sites(prog: Program) -> list[Site]:
    """``S.step()`` after ``O.step()`` in one loop body (or one step function): move S before the statement
    holding O. Shapes: per-iteration (same innermost loop), step function (no loop), epoch-level (O in an inner
    loop of S's loop)."""
    sched_vars, opt_vars = binding_sets(prog.tree)
    sites = []
    for s_call in [n for n in ast.walk(prog.tree) if isinstance(n, ast.Call)]:
        k = step_kind(s_call, sched_vars, opt_vars)
        if not k or k[0] != "sched":
            continue
        recv = k[1]
        scope = _scope_of(s_call)
        if scope is None:
            continue
        prev = []
        for n in walk_scope(scope):
            if n is s_call:
                break
            if isinstance(n, ast.Call):
                kk = step_kind(n, sched_vars, opt_vars)
                if kk and kk[0] == "opt":
                    prev.append(n)
        if not prev:
            continue
        o_call = prev[-1]
        s_anc = [s_call] + parents(s_call)
        o_anc = [o_call] + parents(o_call)
        common = next((a for a in s_anc if a in o_anc and not isinstance(a, ast.expr)), None)
        if common is None:
            continue
        s_top = s_anc[s_anc.index(common) - 1]
        o_top = o_anc[o_anc.index(common) - 1]
        block = None
        for field in ("body", "orelse", "finalbody"):
            seq = getattr(common, field, None)
            if isinstance(seq, list) and s_top in seq and o_top in seq:
                block = seq
        if block is None or block.index(o_top) >= block.index(s_top):
            continue
        if not (whole_lines(prog, s_top) and whole_lines(prog, o_top)):
            continue
        inner = [n for n in ast.walk(s_top) if isinstance(n, ast.Call)]
        if any(is_backward(n) or is_clearing(n) or (step_kind(n, sched_vars, opt_vars) or ("",))[0] == "opt" for n in inner):
            continue
        if s_top.col_offset != o_top.col_offset:
            continue
        lines = prog.lines
        s_lines = lines[s_top.lineno - 1 : s_top.end_lineno]
        o0 = o_top.lineno - 1
        new = lines[:o0] + s_lines + lines[o0 : s_top.lineno - 1] + lines[s_top.end_lineno :]
        n_moved = len(s_lines)
        # program lines of the moved statement, then of the optimizer step (shifted down by the move)
        accept = set(range(o0 + 1, o0 + n_moved + 1)) | {o_call.lineno + n_moved}
        site = Site(prog, "scheduler-before-optimizer", s_top.lineno, s_top.end_lineno, new, accept,
                    f"move `{text(s_call)}` before `{lines[o_top.lineno - 1].strip()}`")
        s_loop, o_loop = innermost_loop(s_call), innermost_loop(o_call)
        if s_loop is None:
            site.shape = "step function (no loop in it)"
        elif o_loop is s_loop:
            site.shape = "per-iteration"
        else:
            site.shape = "outer loop (the optimizer steps in an inner loop: epoch-level)"
        _scheduler_not_a_bug(site, s_call, recv, prog)
        # the accept lines are in the mutant's numbering: map them through the mutant, not the original
        sites.append(site)
    return sites


def _scheduler_not_a_bug(site: Site, s_call: ast.Call, recv: str, prog: Program) -> None:
    if s_call.args or s_call.keywords:
        site.status, site.reason = "not-a-bug", (
            f"`{text(s_call)}` is given an argument (a step count or a metric): it sets the LR for that count or "
            "metric, so calling it before the optimizer step does not skip a scheduled value")


def _scope_of(node: ast.AST) -> ast.AST | None:
    return innermost_loop(node) or enclosing_function(node)


def zero_grad_sites(prog: Program) -> list[Site]:
    sched_vars, opt_vars = binding_sets(prog.tree)
    sites = []
    seen_stmts = set()
    for node in ast.walk(prog.tree):
        if not is_clearing(node):
            continue
        stmt = statement_of(node)
        # climb to a for/if that only clears (for p in params: p.grad = None)
        scope = _scope_of(stmt)
        while True:
            par = getattr(stmt, "_parent", None)
            if isinstance(par, (ast.For, ast.If)) and par is not scope and _only_clearing(par):
                stmt = par
                scope = _scope_of(stmt)
                continue
            break
        if id(stmt) in seen_stmts or scope is None:
            continue
        seen_stmts.add(id(stmt))
        events = []  # ('clear', stmt) / ('step', call, recv) / ('bwd', call) in source order
        for n in walk_scope(scope):
            if isinstance(n, ast.Call):
                k = step_kind(n, sched_vars, opt_vars)
                if k and k[0] == "opt":
                    events.append(("step", n, k[1]))
                elif is_backward(n):
                    events.append(("bwd", n, ""))
            if is_clearing(n):
                events.append(("clear", n, ""))
        steps = [e for e in events if e[0] == "step"]
        if not steps or not any(e[0] == "bwd" for e in events):
            continue
        if not whole_lines(prog, stmt):
            continue

        def paired(idx: int):
            """The optimizer step a clearing is for: the step of the same optimizer if the clearing names one,
            else the next step (wrapping round the loop)."""
            recv = _clear_receiver(events[idx][1])
            same = [e for e in steps if e[2] == recv]
            if same:
                later = [e for e in same if events.index(e) > idx]
                return later[0] if later else same[0]
            after = [e for e in events[idx + 1 :] if e[0] == "step"]
            if after:
                return after[0]
            return steps[0] if isinstance(scope, LOOPS) else None

        mine = [i for i, e in enumerate(events) if e[0] == "clear" and _inside(e[1], stmt)]
        if not mine:
            continue
        target = paired(mine[0])
        if target is None:
            continue
        others = [i for i, e in enumerate(events) if e[0] == "clear" and not _inside(e[1], stmt)]
        my_ifs = _if_chain(stmt, scope)
        step_ifs = _if_chain(target[1], scope)
        covering = [
            events[i][1]
            for i in others
            if paired(i) is target and (_if_chain(events[i][1], scope) <= my_ifs or _if_chain(events[i][1], scope) <= step_ifs)
        ]
        new = _blank(prog.lines, stmt, "pass")
        accept = set(range(stmt.lineno, stmt.end_lineno + 1)) | {target[1].lineno}
        site = Site(prog, "missing-zero-grad", stmt.lineno, stmt.end_lineno, new, accept,
                    f"delete `{prog.lines[stmt.lineno - 1].strip()}` (clears for `{text(target[1])}`)")
        site.shape = "loop" if isinstance(scope, LOOPS) else "step function (no loop in it)"
        if covering:
            site.status, site.reason = "not-a-bug", (
                f"another clearing for the same step remains: `{text(statement_of(covering[0]))}` "
                f"(line {prog.position(covering[0].lineno)[1]})")
        sites.append(site)
    return sites


def _clear_receiver(node: ast.AST) -> str:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "zero_grad":
        return text(node.func.value)
    return ""


def _if_chain(node: ast.AST, scope: ast.AST) -> set:
    """The (if, branch) pairs and inner loops between ``node`` and ``scope``: the conditions under which it runs."""
    out = set()
    child = node
    for p in parents(node):
        if p is scope:
            break
        if isinstance(p, ast.If):
            out.add((id(p), "body" if child in p.body else "orelse" if child in p.orelse else "test"))
        elif isinstance(p, LOOPS + (ast.Try, ast.With)):
            pass
        child = p
    return out


def _inside(node: ast.AST, stmt: ast.stmt) -> bool:
    return node is stmt or stmt in parents(node)


def accumulation_sites(prog: Program) -> list[Site]:
    sched_vars, opt_vars = binding_sets(prog.tree)
    sites = []
    for node in ast.walk(prog.tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            num, den = node.left, node.right
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div):
            num, den = node.target, node.value
        else:
            continue
        if not _ACCUM.search(text(den)):
            continue
        stmt = statement_of(node)
        func = enclosing_function(stmt)
        target_text = " ".join(text(t) for t in getattr(stmt, "targets", [])) + text(getattr(stmt, "target", ast.Pass()))
        if not ("loss" in text(num).lower() or "loss" in target_text.lower() or (func and "loss" in func.name.lower())):
            continue
        if not whole_lines(prog, stmt):
            continue
        # the edit
        lines = prog.lines
        if isinstance(node, ast.AugAssign):
            new = _blank(lines, stmt, "pass")
        else:
            if isinstance(stmt, ast.Assign) and node is stmt.value and text(num) == text(stmt.targets[0]):
                new = _blank(lines, stmt, "pass")
            else:
                seg = ast.get_source_segment("\n".join(lines), num)
                whole = "\n".join(lines[stmt.lineno - 1 : stmt.end_lineno])
                full_seg = ast.get_source_segment("\n".join(lines), node)
                if seg is None or full_seg is None or full_seg not in whole:
                    continue
                # keep parentheses balanced: replace the whole BinOp (with its own parens if any) by the numerator
                replaced = whole.replace(full_seg, seg if isinstance(num, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) else f"({seg})", 1)
                rl = replaced.split("\n")
                rl += [""] * (stmt.end_lineno - stmt.lineno + 1 - len(rl))
                new = lines[: stmt.lineno - 1] + rl + lines[stmt.end_lineno :]
        scope = _scope_of(stmt)
        accept = set(range(stmt.lineno, stmt.end_lineno + 1))
        bwds, steps = [], []
        if scope is not None:
            for n in walk_scope(scope):
                if isinstance(n, ast.Call) and is_backward(n):
                    bwds.append(n)
        for n in walk_scope(func if func is not None else prog.tree):
            if True:
                if isinstance(n, ast.Call):
                    k = step_kind(n, sched_vars, opt_vars)
                    if k and k[0] == "opt":
                        steps.append(n)
        accept |= {b.lineno for b in bwds if b.lineno >= stmt.lineno}
        if not bwds and func is not None:
            accept |= _where_returned_loss_goes(prog, func, stmt)
            # The loss handed to a call that backpropagates it (`loss_scaler(loss, optimizer, ...)`).
            names = {text(t) for t in getattr(stmt, "targets", [])} | {text(getattr(stmt, "target", ast.Pass()))} | {text(num)}
            for n in walk_scope(func):
                if isinstance(n, ast.Call) and n.lineno > stmt.end_lineno and any(text(a) in names for a in n.args):
                    accept |= set(range(n.lineno, (n.end_lineno or n.lineno) + 1))
        site = Site(prog, "unscaled-accumulation-loss", stmt.lineno, stmt.end_lineno, new, accept,
                    f"drop `/ {text(den)}` from `{lines[stmt.lineno - 1].strip()}`")
        if ".detach()" in text(num) or ".item()" in text(num):
            site.status, site.reason = "not-a-bug", "the divided value is detached: it only feeds logging, not backward()"
        elif steps and bwds and not _accumulates(bwds, steps):
            site.status, site.reason = "not-a-bug", "no accumulation here: the optimizer steps on every backward()"
        if not bwds and not steps:
            site.shape = "loss returned to a caller / framework (no backward() or step in the function)"
        elif not steps:
            site.shape = "backward() here, optimizer stepped elsewhere"
        else:
            site.shape = "loop with backward() and step"
        sites.append(site)
    return sites


def _where_returned_loss_goes(prog: Program, func: ast.AST, stmt: ast.stmt) -> set[int]:
    """For a loss computed in a function and returned: the lines that report it where it leaves (the function's
    later ``return`` statements) and where it is backpropagated in this file (``backward()`` calls in the
    functions that call it, and in the same-file functions those callers hand the result to)."""
    out: set[int] = set()
    for n in walk_scope(func):
        if isinstance(n, ast.Return) and n.lineno >= stmt.lineno:
            out |= set(range(n.lineno, (n.end_lineno or n.lineno) + 1))
    name = getattr(func, "name", None)
    if not name:
        return out
    defs = {d.name: d for d in ast.walk(prog.tree) if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for caller in defs.values():
        calls = [c for c in walk_scope(caller) if isinstance(c, ast.Call)]
        if not any((isinstance(c.func, ast.Name) and c.func.id == name) or (isinstance(c.func, ast.Attribute) and c.func.attr == name) for c in calls):
            continue
        targets = [caller]
        for c in calls:  # functions the caller hands values to (a `backward_pass(engine, loss)` closure)
            callee = c.func.id if isinstance(c.func, ast.Name) else None
            if callee in defs:
                targets.append(defs[callee])
            for node in ast.walk(caller):  # names bound to local functions: `backward_pass = amp_backward_pass`
                if isinstance(node, ast.Assign) and callee and any(isinstance(t, ast.Name) and t.id == callee for t in node.targets):
                    for v in ast.walk(node.value):
                        if isinstance(v, ast.Name) and v.id in defs:
                            targets.append(defs[v.id])
            for node in ast.walk(prog.tree):
                if isinstance(node, ast.Assign) and callee and any(isinstance(t, ast.Name) and t.id == callee for t in node.targets):
                    for v in ast.walk(node.value):
                        if isinstance(v, ast.Name) and v.id in defs:
                            targets.append(defs[v.id])
        for t in targets:
            out |= {b.lineno for b in walk_scope(t) if isinstance(b, ast.Call) and is_backward(b)}
    return out


def _accumulates(bwds: list[ast.Call], steps: list[ast.Call]) -> bool:
    """Backward runs more often than the step: the step is conditional, or backward sits in an inner loop."""
    for s in steps:
        s_loop = innermost_loop(s)
        for b in bwds:
            b_loop = innermost_loop(b)
            if b_loop is not None and b_loop is not s_loop and (s_loop is None or s_loop in parents(b_loop)):
                return True
            for p in parents(s):
                if p is s_loop or isinstance(p, DEFS):
                    break
                if isinstance(p, ast.If):
                    return True
    return False


FINDERS = {
    "scheduler-before-optimizer": scheduler_sites,
    "missing-zero-grad": zero_grad_sites,
    "unscaled-accumulation-loss": accumulation_sites,
}

# ------------------------------------------------------------------------------------------------ running


def _doctor(files: list[str], cwd: str, rule: str, config: str) -> list[dict]:
    cmd = [sys.executable, "-m", "doctor", "check", *files, "--select", rule, "--format", "json", "--no-cache",
           "--exit-zero", "--jobs", "1", "--config", config]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"doctor failed (rc {out.returncode}): {out.stderr[-3000:]}")
    return data["findings"]


def load_programs(root: str) -> list[Program]:
    progs = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith((".py", ".ipynb")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                with open(path, encoding="utf-8") as fh:
                    raw = fh.read()
                if "backward" not in raw and "step" not in raw:
                    continue
                progs.append(Program(rel, raw))
            except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
                continue
    return progs


def run(corpus: str, repos: list[str], rules: list[str], cap: int, out_path: str, provenance: dict | None = None) -> int:
    overrides = {}
    if os.path.isfile(OVERRIDES):
        with open(OVERRIDES, encoding="utf-8") as fh:
            overrides = json.load(fh).get("overrides", {})
    config = os.path.join(corpus, "doctor.toml")
    records = []
    start = time.time()
    scratch_root = tempfile.mkdtemp(prefix="rw-mutants-")
    try:
        for repo in repos:
            src = os.path.join(corpus, repo)
            progs = load_programs(src)
            by_rule = {r: [] for r in rules}
            for prog in progs:
                for r in rules:
                    by_rule[r].extend(FINDERS[r](prog))
            if not any(by_rule.values()):
                continue
            scratch = os.path.join(scratch_root, repo)
            shutil.copytree(src, scratch)
            shutil.copy(config, os.path.join(scratch_root, "doctor.toml"))
            cfg = os.path.join(scratch_root, "doctor.toml")
            for rule in rules:
                sites = by_rule[rule][:cap]
                if not sites:
                    continue
                repo_name = repo.replace("__", "/", 1)
                for s in sites:
                    ov = overrides.get(s.key(repo_name))
                    if ov:
                        s.status, s.reason = ov.get("status", s.status), ov.get("reason", s.reason)
                        if ov.get("status") == "mutant":  # an override that un-does an automatic not-a-bug
                            s.status = None
                for s in sites:
                    try:
                        ast.parse("\n".join(s.new_lines) + "\n")
                    except SyntaxError as exc:
                        s.status, s.reason = "invalid", f"the mutant does not parse: {exc.msg} (line {exc.lineno})"
                runnable = [s for s in sites if s.status not in ("not-a-bug", "invalid")]
                files = sorted({s.prog.rel for s in runnable})
                base = _doctor([os.path.join(repo, f) for f in files], scratch_root, rule, cfg) if files else []
                base_pos = collections.defaultdict(set)
                for f in base:
                    base_pos[f["path"].split("/", 1)[1]].add((f.get("cell"), f["line"]))
                # batches: one mutant per file per doctor run
                pending = collections.defaultdict(list)
                for s in runnable:
                    pending[s.prog.rel].append(s)
                while any(pending.values()):
                    batch = [lst.pop(0) for lst in pending.values() if lst]
                    for s in batch:
                        with open(os.path.join(scratch, s.prog.rel), "w", encoding="utf-8") as fh:
                            fh.write(s.prog.render(s.new_lines))
                    found = _doctor([os.path.join(repo, s.prog.rel) for s in batch], scratch_root, rule, cfg)
                    for s in batch:
                        with open(os.path.join(scratch, s.prog.rel), "w", encoding="utf-8") as fh:
                            fh.write(s.prog.raw)
                        mine = [f for f in found if f["path"].split("/", 1)[1] == s.prog.rel]
                        hit = [f for f in mine if (f.get("cell"), f["line"]) in s.accept_positions()]
                        s.found_at = sorted({(f.get("cell"), f["line"]) for f in mine}, key=lambda x: (x[0] or 0, x[1]))
                        s.status = "caught" if hit else "missed"
                        s.base = sorted(base_pos.get(s.prog.rel, set()), key=lambda x: (x[0] or 0, x[1]))
                        if hit and set(hit_pos(hit)) <= base_pos.get(s.prog.rel, set()):
                            s.status, s.reason = "missed", "the only report at the site was there before the mutation"
                for s in sites:
                    rec = {
                        "key": s.key(repo_name),
                        "repo": repo_name,
                        "path": s.prog.rel,
                        "site": s.location(),
                        "rule": rule,
                        "mutation": s.what,
                        "status": s.status,
                        "reason": s.reason,
                        "shape": s.shape,
                    }
                    if getattr(s, "found_at", None) is not None:
                        rec["reported_at"] = [f"{'cell %d ' % c if c is not None else ''}{n}" for c, n in s.found_at]
                    records.append(rec)
                print(f"  {repo_name:42s} {rule:28s} sites {len(by_rule[rule]):3d} (ran {len(sites)})", flush=True)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump({"doctor": provenance or {}, "cap_per_rule_per_repo": cap, "mutants": records}, fh, indent=1)
        fh.write("\n")
    print(f"\nwrote {os.path.relpath(out_path)} ({len(records)} mutants, {time.time() - start:.0f} s)")
    print(f"\n{'rule':28s} {'caught':>6s} {'missed':>6s} {'not-a-bug':>9s} {'recall':>7s}")
    for rule in rules:
        c = collections.Counter(r["status"] for r in records if r["rule"] == rule)
        denom = c["caught"] + c["missed"]
        recall = f"{c['caught'] / denom:.1%}" if denom else "-"
        print(f"{rule:28s} {c['caught']:6d} {c['missed']:6d} {c['not-a-bug']:9d} {recall:>7s}"
              + (f"   ({c['invalid']} invalid mutants)" if c["invalid"] else ""))
    print("\nby shape (caught / caught+missed):")
    shapes = collections.defaultdict(collections.Counter)
    for r in records:
        shapes[(r["rule"], r["shape"])][r["status"]] += 1
    for (rule, shape), c in sorted(shapes.items()):
        denom = c["caught"] + c["missed"]
        if denom:
            print(f"  {rule:28s} {shape[:60]:60s} {c['caught']:3d}/{denom:<3d}")
    for status in ("missed", "not-a-bug"):
        rows = [r for r in records if r["status"] == status]
        if rows:
            print(f"\n{status}:")
            for r in rows:
                extra = f" -- {r['reason']}" if r["reason"] else ""
                print(f"  {r['rule']:28s} {r['repo'].replace('/', '__')}/{r['site']}  {r['mutation'][:80]}{extra[:160]}")
    return 0


def hit_pos(hits: list[dict]):
    return [(f.get("cell"), f["line"]) for f in hits]
