"""IPython's own syntax in notebook cells, recognised the way IPython recognises it, and replaced by Python.

IPython (``IPython.core.inputtransformer2``) turns a cell into Python in this order:

1. cleanup: the cell's leading indentation is removed from every line that has it (a cell indented as a
   whole runs), and ``>>>`` / ``In [1]:`` prompts pasted from a console are stripped;
2. a cell magic: ``%%name`` on the cell's first line makes the whole cell one magic call;
3. token transforms, at the start of a *logical* line only (never inside brackets, strings or a
   backslash-continued line): escaped commands ``!cmd``, ``!!cmd``, ``%magic``, ``?obj``, ``??obj`` and the
   autocall escapes ``,`` ``;`` ``/``, each continued onto the next lines by a trailing ``\\``; assignments
   ``x = !cmd`` and ``x = %magic``; help lines ending in ``obj?`` / ``obj??``.

We do the same, but instead of IPython's calls we write something that keeps the program valid and every
line where it was: an escaped line becomes ``pass`` at its own indentation (so a ``!wget`` that is the only
statement of an ``if`` block still leaves a block), an assignment keeps its target (``x = None``), and the
lines a ``\\`` continued become empty. Removed indentation and prompts are remembered per line so that columns
can be mapped back.

``pip install x`` and ``conda install x`` typed without ``%`` run through IPython's automagic; they are not
Python, so they are treated as escaped lines too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: First characters of an escaped line (``!!`` and ``??`` start with one of them).
ESCAPES = frozenset("!?%,;/")
#: Cell magics whose body is Python, run by IPython (timed, captured, profiled...): the body is checked.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug", "memit", "mprun", "skip", "autoreload"})

_INDENT = re.compile(r"[ \t]+")
_CLASSIC_FIRST = re.compile(r"^>>>( |$)")
_CLASSIC = re.compile(r"^(>>>|\.\.\.)( |$)")
_IPYTHON_PROMPT = re.compile(r"^(In \[\d+\]: |\s*\.{3,}: ?)")
_AUTOMAGIC = re.compile(r"(?:pip|conda|mamba)\s+(?:install|uninstall|list|show|freeze|download|update|remove)\b")
# IPython's help-end pattern: `obj?`, `obj.attr??`, `%magic?`, `np.*load*?` at the end of a logical line.
_HELP_END = re.compile(r"%{0,2}[a-zA-Z_*][\w*]*(?:\.[a-zA-Z_*][\w*]*)*\?\??$")
# Characters that change the scanner's state outside strings.
_SPECIAL = re.compile(r"""[#'"()\[\]{}\\=]""")
_STRING_START = re.compile(r"""(?:[rRbBuUfF]{0,2})('''|\"\"\"|'|")""")


@dataclass
class CellCode:
    """A cell as Python: its lines (as many as the cell has), and what was changed to get there."""

    lines: list[str]
    #: Per line (0-based): characters removed at its start (the cell's indentation, a prompt).
    removed: dict[int, int] = field(default_factory=dict)
    #: Lines (0-based) that are not the cell's own Python: replaced escaped commands and magics.
    replaced: set[int] = field(default_factory=set)


def cell_to_python(cell_lines: list[str]) -> CellCode:
    """``cell_lines`` (without line ends) as valid Python in the same number of lines, as IPython reads them."""
    code = CellCode(list(cell_lines))
    _cleanup(code)
    first = next((i for i, line in enumerate(code.lines) if line.strip()), None)
    if first is not None and code.lines[first].startswith("%%"):
        header = code.lines[first]
        name = re.split(r"[\s?]", header[2:], maxsplit=1)[0]
        code.lines[first] = "pass"
        code.replaced.add(first)
        if name in PYTHON_CELL_MAGICS and not header.rstrip().endswith("?"):
            # The body is Python that IPython runs as a cell of its own (with the same cleanup).
            body = cell_to_python(code.lines[first + 1 :])
            for i, line in enumerate(body.lines):
                code.lines[first + 1 + i] = line
            for i, n in body.removed.items():
                code.removed[first + 1 + i] = code.removed.get(first + 1 + i, 0) + n
            code.replaced.update(first + 1 + i for i in body.replaced)
        else:  # %%bash, %%writefile, %%html...: not Python at all
            for i in range(first + 1, len(code.lines)):
                code.lines[i] = ""
                code.replaced.add(i)
        return code
    _replace_escapes(code)
    return code


def _cleanup(code: CellCode) -> None:
    """IPython's cleanup transforms: the cell's own indentation, then console prompts."""
    lines = code.lines
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return
    m = _INDENT.match(lines[first])
    if m:
        space = m.group(0)
        for i in range(first, len(lines)):
            if lines[i].startswith(space):
                lines[i] = lines[i][len(space) :]
                code.removed[i] = code.removed.get(i, 0) + len(space)
    for initial, prompt in ((_CLASSIC_FIRST, _CLASSIC), (_IPYTHON_PROMPT, _IPYTHON_PROMPT)):
        second = next((i for i in range(first + 1, len(lines)) if lines[i].strip()), None)
        if initial.match(lines[first]) or (second is not None and prompt.match(lines[second])):
            for i in range(first, len(lines)):
                m = prompt.match(lines[i])
                if m:
                    lines[i] = lines[i][m.end() :]
                    code.removed[i] = code.removed.get(i, 0) + m.end()


def _continued_until(lines: list[str], start: int) -> int:
    """The last line of the command that starts on ``start``: a trailing backslash continues it."""
    end = start
    while lines[end].endswith("\\") and end + 1 < len(lines):
        end += 1
    return end


def _replace(code: CellCode, start: int, end: int, first_line: str) -> None:
    code.lines[start] = first_line
    code.replaced.add(start)
    for j in range(start + 1, end + 1):
        code.lines[j] = ""
        code.replaced.add(j)


def _replace_escapes(code: CellCode) -> None:
    lines = code.lines
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped[:1] in ESCAPES or _AUTOMAGIC.match(stripped):
            end = _continued_until(lines, i)
            _replace(code, i, end, indent + "pass")
            i = end + 1
            continue
        i = _logical_line(code, i, indent)


def _logical_line(code: CellCode, start: int, indent: str) -> int:
    """Scan the logical line starting at ``start``; replace it when it is IPython syntax. Returns the next line."""
    lines = code.lines
    depth = 0
    quote = None  # the delimiter of the string we are in
    assign_checked = False
    i = start
    code_end = ""  # the logical line's code so far, comments left out (for the help-end test)
    while i < len(lines):
        line = lines[i]
        pos = 0
        continued = False
        pieces = []
        while pos < len(line):
            if quote is not None:
                j = _string_end(line, pos, quote)
                if j < 0:
                    if len(quote) == 1 and not line.endswith("\\"):
                        quote = None  # an unterminated one-line string: the parser will say so
                    pieces.append(line[pos:])
                    pos = len(line)
                    break
                pieces.append(line[pos:j])
                pos, quote = j, None
                continue
            m = _SPECIAL.search(line, pos)
            if m is None:
                pieces.append(line[pos:])
                pos = len(line)
                break
            c = m.group(0)
            pieces.append(line[pos : m.start()])
            pos = m.end()
            if c == "#":
                break  # the rest of the line is a comment
            if c in "'\"":
                s = _STRING_START.match(line, m.start())
                assert s is not None
                quote = s.group(1)
                pos = m.start() + len(s.group(1))
                pieces.append(line[m.start() : pos])
            elif c in "([{":
                depth += 1
                pieces.append(c)
            elif c in ")]}":
                depth = max(depth - 1, 0)
                pieces.append(c)
            elif c == "\\":
                if pos == len(line):
                    continued = True
                pieces.append(c)
            elif c == "=":
                pieces.append(c)
                if depth or assign_checked:
                    continue
                before = line[m.start() - 1 : m.start()]
                if (before and before in "=!<>+-*/%&|^@:~") or line[pos : pos + 1] == "=":
                    continue  # ==, !=, <=, +=, :=, ... are not the assignment
                assign_checked = True
                rest = line[pos:]
                value = rest.lstrip()
                if value.startswith("!") and not value.startswith("!=") or re.match(r"%[A-Za-z_]", value):
                    # `x = !cmd` / `x = %magic`: the target stays, the command becomes a value.
                    end = _continued_until(lines, i)
                    _replace(code, i, end, line[:pos] + " None")
                    return end + 1
        code_end += "".join(pieces)
        if quote is None and depth == 0 and not continued:
            break
        i += 1
    end = min(i, len(lines) - 1)
    if quote is None and _HELP_END.search(code_end.strip()):
        _replace(code, start, end, indent + "pass")  # `obj?`: IPython shows help, it runs nothing
    return end + 1


def _string_end(line: str, pos: int, quote: str) -> int:
    """Position just after the closing ``quote`` on ``line`` from ``pos``, or -1 when the string goes on."""
    i = pos
    while True:
        j = line.find(quote[0], i)
        k = line.find("\\", i)
        if k >= 0 and (j < 0 or k < j):
            i = k + 2  # an escaped character, whatever it is
            if i > len(line):
                return -1
            continue
        if j < 0:
            return -1
        if line.startswith(quote, j):
            return j + len(quote)
        i = j + 1
