"""Reading source files: encodings, BOMs, line endings, notebooks."""

from __future__ import annotations

import io
import json
import re
import tokenize
from dataclasses import dataclass, field
from typing import Optional

# Files that mention none of these cannot hold a training loop, an init or a loss we care about.
# Checking raw bytes before decoding and parsing is the cheapest speed-up there is (torchfix does it too).
_PREFILTER = re.compile(
    rb"torch|backward|zero_grad|optim|\.step\(|nn\.|lightning|accelerat|deepspeed|init\.|DataLoader|forward|compute_loss"
)


def worth_parsing(data: bytes) -> bool:
    return _PREFILTER.search(data) is not None


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


_MAGIC = re.compile(r"^\s*(%|!)")
# Other IPython-only lines: `x = !ls`, `t = %time f()`, `obj?`, `??obj`, and the pip/conda automagics.
_IPYTHON_ONLY = re.compile(
    r"^\s*[\w.,\s]+=\s*[!%]"
    r"|^\s*[\w.\[\]()'\"]+\s*\?{1,2}\s*$"
    r"|^\s*\?{1,2}\s*[\w.]+\s*$"
    r"|^\s*(pip|conda)\s+(install|uninstall|list)\b"
)
# Cell magics whose body is still Python; any other `%%magic` (bash, html, writefile...) makes the cell not Python.
_PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun", "debug", "memit", "mprun", "skip", "autoreload"}


def _python_lines(cell_lines: list[str]) -> list[str]:
    """The cell's lines with IPython-only lines blanked (a whole cell for a non-Python `%%magic`)."""
    first = next((line.strip() for line in cell_lines if line.strip()), "")
    if first.startswith("%%") and first[2:].split(" ")[0] not in _PYTHON_CELL_MAGICS:
        return ["" for _ in cell_lines]
    return ["" if _MAGIC.match(line) or _IPYTHON_ONLY.match(line) else line for line in cell_lines]


def decode_notebook(data: bytes) -> Source:
    """Join a notebook's code cells into one program, blanking IPython magics and shell lines.

    Each cell keeps its own lines so a position in the joined text maps back to (cell, line).
    Raises ValueError with a readable message when the file is not a notebook.
    """
    try:
        nb = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a valid notebook (JSON): {exc}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("not a valid notebook: no 'cells' list")
    lines: list[str] = []
    cells: list[tuple[int, int, int]] = []
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        cell_lines = text.splitlines()
        first = len(lines) + 1
        # A magic or shell line is not Python; keep the line, blanked, so positions stay right.
        lines.extend(_python_lines(cell_lines))
        cells.append((index, first, len(cell_lines)))
        lines.append("")  # a separator line between cells
    return Source(text="\n".join(lines) + "\n", cells=cells, notebook=nb)


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
