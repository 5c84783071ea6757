"""Reading source files: encodings, BOMs, line endings, notebooks."""

from __future__ import annotations

import codecs
import io
import json
import re
import tokenize
from dataclasses import dataclass, field
from typing import Optional

from doctor.core.ipython import cell_to_python

# Files that mention none of these cannot hold a training loop, an init or a loss we care about.
# Checking raw bytes before decoding and parsing is the cheapest speed-up there is (torchfix does it too).
_PREFILTER = re.compile(
    rb"torch|backward|zero_grad|optim|\.step\(|nn\.|lightning|accelerat|deepspeed|init\.|DataLoader|forward|compute_loss"
)


def worth_parsing(data: bytes) -> bool:
    return _PREFILTER.search(data) is not None


_PREFILTER_TEXT = re.compile(_PREFILTER.pattern.decode("ascii"))


def worth_parsing_text(text: str) -> bool:
    """``worth_parsing`` for decoded text."""
    return _PREFILTER_TEXT.search(text) is not None


@dataclass
class Source:
    """Decoded text of one file, plus what we need to write it back unchanged in form."""

    text: str
    encoding: str = "utf-8"
    bom: bool = False
    newline: str = "\n"
    #: False when bytes could not be decoded: we analyse a lossy copy but must never write it back.
    lossless: bool = True
    #: For notebooks: (cell index, first line of the cell in ``text``), and the raw notebook JSON.
    cells: list[tuple[int, int, int]] = field(default_factory=list)
    notebook: Optional[dict] = None
    #: For notebooks: the kernel's language when the metadata names it (``python``, ``r``, ``julia``...).
    language: Optional[str] = None
    #: For notebooks: per line of ``text``, characters IPython's cleanup removed at its start (a cell's
    #: common indentation, a pasted prompt); columns in ``text`` plus this are columns in the cell.
    removed: dict[int, int] = field(default_factory=dict)
    #: For notebooks: lines of ``text`` that replace IPython syntax (magics, shell and help lines).
    ipython_lines: set[int] = field(default_factory=set)


def _newline_of(text: str) -> str:
    idx = text.find("\n")
    if idx > 0 and text[idx - 1] == "\r":
        return "\r\n"
    if idx < 0 and "\r" in text:
        return "\r"
    return "\n"


def decode_python(data: bytes) -> Source:
    """Decode Python source bytes the way the interpreter does (PEP 263 cookie, BOM)."""
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except (SyntaxError, LookupError):
        encoding = "utf-8"
    if encoding == "utf-8-sig":
        encoding = "utf-8"
    raw = data[3:] if bom else data
    try:
        text = raw.decode(encoding)
        lossless = True
    except (UnicodeDecodeError, LookupError):
        text = raw.decode("utf-8", errors="replace")
        lossless = False
    return Source(text=text, encoding=encoding, bom=bom, newline=_newline_of(text), lossless=lossless)


def encode_python(source: Source, text: str) -> bytes:
    data = text.encode(source.encoding)
    return (b"\xef\xbb\xbf" + data) if source.bom else data


def text_problem(data: bytes) -> Optional[str]:
    """Why ``data`` is not Python source text at all (binary, UTF-16/32), or None.

    Python reads source as UTF-8 or the encoding a PEP 263 line names; neither can hold NUL bytes, and a
    UTF-16 file's coding line cannot even be read. Such a file is reported once, as what it is.
    """
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "not Python text: the file is UTF-32 encoded (Python reads source as UTF-8 or a PEP 263 encoding)"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "not Python text: the file is UTF-16 encoded (Python reads source as UTF-8 or a PEP 263 encoding)"
    if b"\0" in data:
        if len(data) >= 4 and (data[1::2].count(0) * 2 >= len(data) // 2 or data[0::2].count(0) * 2 >= len(data) // 2):
            return "not Python text: the file looks UTF-16 encoded (Python reads source as UTF-8 or a PEP 263 encoding)"
        return "not Python text: the file holds binary data (NUL bytes)"
    return None


class NotebookError(ValueError):
    """The file is not a notebook doctor can read; the message says why."""


def cell_source(cell: dict, number: int) -> str:
    """A cell's source as one string (nbformat: a string or a list of strings); NotebookError otherwise."""
    src = cell.get("source", "")
    if isinstance(src, str):
        return src
    if isinstance(src, list) and all(isinstance(part, str) for part in src):
        return "".join(src)
    raise NotebookError(f"not a valid notebook: the source of cell {number} is not text (a string or a list of strings)")


def notebook_language(nb: dict) -> Optional[str]:
    """The kernel's language as the notebook's metadata names it, or None when it does not say."""
    meta = nb.get("metadata")
    if not isinstance(meta, dict):
        return None
    for key, field_name in (("kernelspec", "language"), ("language_info", "name")):
        table = meta.get(key)
        if isinstance(table, dict) and isinstance(table.get(field_name), str) and table[field_name].strip():
            return table[field_name].strip().lower()
    return None


def decode_notebook(data: bytes) -> Source:
    """Join a notebook's code cells into one program, with IPython's own syntax replaced by Python.

    Each cell keeps its own lines so a position in the joined text maps back to (cell, line); magics and
    shell lines become ``pass`` (see ``doctor.core.ipython``). Raises ``NotebookError`` (a ValueError) with a
    readable message when the file is not a notebook.
    """
    try:
        nb = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise NotebookError(f"not a valid notebook (JSON): {exc}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError("not a valid notebook: no 'cells' list")
    lines: list[str] = []
    cells: list[tuple[int, int, int]] = []
    removed: dict[int, int] = {}
    replaced: set[int] = set()
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        cell_lines = cell_source(cell, index + 1).splitlines()
        first = len(lines) + 1
        code = cell_to_python(cell_lines)
        lines.extend(code.lines)
        removed.update((first + i, n) for i, n in code.removed.items())
        replaced.update(first + i for i in code.replaced)
        cells.append((index, first, len(cell_lines)))
        lines.append("")  # a separator line between cells
    return Source(
        text="\n".join(lines) + "\n", cells=cells, notebook=nb, language=notebook_language(nb),
        removed=removed, ipython_lines=replaced,
    )


def encode_notebook(original: bytes, nb: dict) -> bytes:
    """Serialise ``nb`` in the layout of the ``original`` file: indent, ASCII escaping, line ending, final newline, BOM.

    Key order is kept (no sorting), so a notebook written by Jupyter (``indent=1``) comes back byte-for-byte
    except where its cells' sources changed.
    """
    bom = original.startswith(b"\xef\xbb\xbf")
    body = original[3:] if bom else original
    indent: "int | str | None" = None
    m = re.match(rb"\s*[\[{]\r?\n([ \t]*)\S", body)
    if m:
        ws = m.group(1)
        indent = "\t" if ws.startswith(b"\t") else len(ws)
    separators = (",", ": ") if indent is not None else ((", ", ": ") if b'": ' in body else (",", ":"))
    ensure_ascii = body.isascii() and b"\\u" in body
    text = json.dumps(nb, indent=indent, ensure_ascii=ensure_ascii, separators=separators)
    if body.rstrip(b" \t").endswith(b"\n"):
        text += "\n"
    if b"\r\n" in body:
        text = text.replace("\n", "\r\n")  # JSON strings escape their newlines: these are all layout
    data = text.encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if bom else data


def cell_position(source: Source, line: int) -> tuple[Optional[int], int]:
    """Map a line of the joined notebook program to (cell index, line within the cell)."""
    for index, first, count in source.cells:
        if first <= line < first + max(count, 1):
            return index, line - first + 1
    return None, line


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')


def notebook_source_lines(data: bytes) -> dict[int, list[int]]:
    """Where each line of each cell's source sits in the notebook file: cell index -> the file line (1-based)
    of the cell's line 1, 2, ... A CI annotation on a notebook must point into the file as stored (JSON),
    not at a line of the cell. Empty when the file is not a notebook we can read."""
    text = data.decode("utf-8-sig", errors="replace")
    out: dict[int, list[int]] = {}
    # One frame per open container: [is_object, key or index, value expected (objects)].
    stack: list[list] = []
    line, pos = 1, 0
    try:
        for m in _JSON_TOKEN.finditer(text):
            line += text.count("\n", pos, m.start())
            pos = m.start()
            tok = m.group(0)
            top = stack[-1] if stack else None
            if tok in "{[":
                stack.append([tok == "{", None if tok == "{" else 0, False])
                continue
            if tok in "}]":
                stack.pop()
                continue
            if tok == ":":
                if top is not None:
                    top[2] = True
                continue
            if tok == ",":
                if top is not None and top[0]:
                    top[1], top[2] = None, False
                elif top is not None:
                    top[1] += 1
                continue
            if top is not None and top[0] and not top[2]:
                top[1] = json.loads(tok)  # a key
                continue
            # A value: is it (part of) a cell's source?
            if (
                len(stack) >= 3 and stack[0][1] == "cells" and not stack[1][0] and stack[2][0] and stack[2][1] == "source"
                and (len(stack) == 3 or (len(stack) == 4 and not stack[3][0]))
                and tok.startswith('"')
            ):
                value = json.loads(tok)
                lines = out.setdefault(stack[1][1], [])
                # nbformat keeps one line per list element, but a writer may put several in one string.
                lines.extend([line] * max(value.count("\n") + (0 if value.endswith("\n") else 1), 1))
    except (ValueError, IndexError, TypeError, AttributeError):
        return {}
    return out
