"""double-label-shift: labels shifted by hand are passed to a model or loss helper that shifts them again."""

from __future__ import annotations

import ast
import weakref
import os
import re
from dataclasses import dataclass
from typing import Optional, Union

from doctor.analysis import objects as K
from doctor.analysis.datasets import dataset_classes, loaders_reaching
from doctor.analysis.layers import built_by
from doctor.analysis.modes import loop_iterated
from doctor.analysis.names import receiver_key
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

MAX_DEPTH = 8
#: Hugging Face classes whose forward shifts `labels` by one (causal language models).
_CAUSAL_LM = re.compile(r"(ForCausalLM|^GPT2LMHeadModel|^OpenAIGPTLMHeadModel|^CTRLLMHeadModel|^TransfoXLLMHeadModel|^GPTNeoXForCausalLM)$")
#: Methods that keep what a tensor's positions hold.
_KEEP = {"to", "cuda", "cpu", "contiguous", "clone", "long", "int", "detach", "view", "reshape", "pin_memory", "type", "astype"}
_WRAP = {"tensor", "as_tensor", "from_numpy", "array", "asarray", "LongTensor", "IntTensor", "stack", "cat", "concatenate"}

Bound = tuple[tuple[str, ...], int]


@dataclass(frozen=True)
class Window:
    """``base[lower:upper]`` along the sequence (the last dimension, or the only one)."""

    base: str
    lower: Bound
    upper: Bound
    node: ast.AST
    program: object


@dataclass(frozen=True)
class Item:
    """An element of the batches a loop iterates: ``for x, y in loader`` (index), ``batch["labels"]`` (key)."""

    loop: ast.AST
    key: Union[int, str, None]
    program: object


@dataclass(frozen=True)
class Shifted:
    """A tensor the same length as ``base`` holding it shifted by one (``labels[:, :-1] = ids[:, 1:]``,
    ``torch.roll(ids, -1, 1)``)."""

    base: str
    node: ast.AST
    program: object


Origin = Union[Window, Item, Shifted, None]


class DoubleLabelShift(Rule):
    name = "double-label-shift"
    code = "DR406"
    severity = Severity.ERROR
    summary = "Labels already shifted by one token are passed to a model or loss helper that shifts them again: the model learns to predict two tokens ahead."
    why = """
        A causal language model predicts token t+1 from tokens 0..t. Hugging Face's `*ForCausalLM` models
        (and loss helpers written like them) do the shift themselves: given `labels`, they compare
        `logits[:, :-1]` with `labels[:, 1:]`, so the labels must be the *unshifted* input ids. Shifting by
        hand first (`input_ids=x[:, :-1], labels=x[:, 1:]`, or a dataset that returns `(chunk[:-1],
        chunk[1:])` as nanoGPT-style code does) shifts twice: every position is trained to predict the token
        after next. The loss still falls (the task is learnable), generation comes out garbled, and nothing
        errors.
    """
    known_problems = """
        Reported when the labels and the inputs of one call are provably the two halves of one shift: a tail and
        a head slice of the same tensor (`ids[:, 1:]` / `ids[:, :-1]`, `data[i + 1:i + 1 + n]` / `data[i:i +
        n]`, also through `torch.stack([...])`), a same-length shifted copy of the inputs (`labels[:, :-1] =
        ids[:, 1:]`, `torch.roll(ids, -1, 1)`), or the elements of the batches of a `DataLoader` whose dataset
        class (this file or a local module) returns such a pair from `__getitem__`, tuple or dict
        (`model(**batch)` included; not with a `collate_fn`). The call must shift again: a Hugging Face causal
        LM (`AutoModelForCausalLM`, `*ForCausalLM`, `GPT2LMHeadModel`; built here, held by `self`, or passed by
        every caller) given `labels=`, or a model class or function we can read that shifts like a causal-LM
        loss (one parameter cut `[..., :-1, :]`, the one receiving the labels `[..., 1:]`); for those, the tail
        slice suffices when its head half is sliced in the same function. A batch element counts only when
        passed as `labels=` or through `**batch`. Labels shifted by a `datasets.map` function, by a collator, or
        inside the Trainer are not followed; models of other libraries are not known to shift.
    """
    bad = """
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained("gpt2")
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
        tokens = torch.randint(0, 50257, (64, 129))
        loader = torch.utils.data.DataLoader(tokens, batch_size=8, shuffle=True)

        for epoch in range(3):
            for ids in loader:
                out = model(input_ids=ids[:, :-1], labels=ids[:, 1:])
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
    """
    good = """
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained("gpt2")
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
        tokens = torch.randint(0, 50257, (64, 129))
        loader = torch.utils.data.DataLoader(tokens, batch_size=8, shuffle=True)

        for epoch in range(3):
            for ids in loader:
                out = model(input_ids=ids, labels=ids)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
    """
    fires = (
        """
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel
class CharDataset(Dataset):
    def __init__(self, data, block_size):
        self.data, self.block_size = data, block_size
    def __len__(self):
        return len(self.data) - self.block_size
    def __getitem__(self, idx):
        chunk = self.data[idx:idx + self.block_size + 1]
        x = torch.tensor(chunk[:-1], dtype=torch.long)
        y = torch.tensor(chunk[1:], dtype=torch.long)
        return x, y
model = GPT2LMHeadModel(GPT2Config())
loader = DataLoader(CharDataset(text_ids, 128), batch_size=32, shuffle=True)
for x, y in loader:
    loss = model(x, labels=y).loss
    loss.backward()
""",
        """
import torch
import torch.nn.functional as F
def causal_lm_loss(logits, labels):
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
for batch in loader:
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    loss = causal_lm_loss(logits, targets)
    loss.backward()
""",
        """
import torch
from transformers import AutoModelForCausalLM
class Trainer:
    def __init__(self, name):
        self.model = AutoModelForCausalLM.from_pretrained(name)
    def step(self, input_ids):
        labels = input_ids.clone()
        labels[:, :-1] = input_ids[:, 1:]
        labels[:, -1] = -100
        return self.model(input_ids=input_ids, labels=labels).loss
""",
    )
    silent = (
        """
import torch
from torch.utils.data import DataLoader, Dataset
class CharDataset(Dataset):
    def __getitem__(self, idx):
        chunk = self.data[idx:idx + self.block_size + 1]
        return torch.tensor(chunk[:-1]), torch.tensor(chunk[1:])
class GPT(torch.nn.Module):
    def forward(self, idx, targets=None):
        logits = self.lm_head(self.transformer(idx))
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
model = GPT()
for x, y in DataLoader(CharDataset(), batch_size=8):
    logits, loss = model(x, y)
    loss.backward()
""",
        """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
for batch in loader:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
    out.loss.backward()
""",
        """
import torch
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
for batch in loader:
    ids = batch["input_ids"]
    out = model(input_ids=ids[:, :-1], labels=ids[:, 1:])
    out.loss.backward()
""",
        """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
for batch in loader:
    ids = batch["input_ids"][:, 1:]  # drop the BOS token from inputs and labels alike
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
""",
    )

    def check(self, ctx):
        text = ctx.source.text
        if "labels" not in text and "1:" not in text and "roll" not in text:
            return  # no shift here and no `labels=` to pass one (a dataset elsewhere shifts only with `labels=`/`**`)
        m = ctx.model
        tracer = _Tracer(m)
        for call in m.nodes(ast.Call):
            if not _could_shift(m, call):
                continue  # `torch.cat(...)`, `x.view(...)`: library calls never shift labels
            # Cheap evidence first: an argument that is provably half of a one-token shift. Only then ask who
            # the callee is (that may search the project for callers).
            batch_args = {id(kw.value) for kw in call.keywords if kw.arg in ("labels", None)}
            candidates = [a for a in (*call.args, *(kw.value for kw in call.keywords)) if not isinstance(a, ast.Starred)]
            proofs = {}
            for arg in candidates:
                origin = tracer.origin(m, arg)
                if isinstance(origin, Window) and origin.lower[1] < 1:
                    continue  # not the later half of a shift
                if isinstance(origin, Item) and id(arg) not in batch_args:
                    continue  # a batch element given as labels (or `**batch`) only
                if origin is not None:
                    proofs[id(arg)] = origin
            if not proofs:
                continue
            found = self._shift_target(m, call)
            if found is None:
                continue
            label_arg, input_arg, shifter = found
            origin = proofs.get(id(label_arg))
            if origin is None:
                continue
            proof = tracer.double_shift(m, origin, input_arg, call)
            if proof is None:
                continue
            yield self.finding(
                ctx,
                call,
                f"`{ctx.segment(label_arg)}` is already shifted by one token ({proof}) and {shifter} shifts the labels "
                "again: every position is trained to predict the token after next; pass the unshifted token ids as labels",
            )

    @staticmethod
    def _shift_target(m, call: ast.Call) -> Optional[tuple[ast.AST, Optional[ast.AST], str]]:
        """(labels argument, inputs argument or None, who shifts) when ``call`` shifts one of its arguments."""
        func = call.func
        callee = func.value if isinstance(func, ast.Attribute) and func.attr == "forward" else func
        labels = next((kw.value for kw in call.keywords if kw.arg == "labels"), None)
        inputs = next((kw.value for kw in call.keywords if kw.arg == "input_ids"), call.args[0] if call.args else None)
        starred = next((kw.value for kw in call.keywords if kw.arg is None), None)
        if labels is not None or starred is not None:
            built = built_by(m, callee) if isinstance(callee, (ast.Name, ast.Attribute)) else None
            if built is not None and _causal_lm(built):
                where = _where(m, built.program, built.call)
                who = f"`{ast.unparse(callee)}` (built by `{_ctor_text(built)}` on {where}; its forward shifts `labels`)"
                if labels is not None:
                    return labels, inputs, who
                return starred, None, who  # `model(**batch)`: the batch's "labels" against its "input_ids"
        # A model class or a function we can read that slices one of its parameters `[..., 1:]`.
        target = _readable_callee(m, call, callee)
        if target is None:
            return None
        program, fn, method, label = target
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        if method and params and params[0] in ("self", "cls"):
            params = params[1:]
        for p in _tail_sliced_params(program, fn):
            arg = next((kw.value for kw in call.keywords if kw.arg == p), None)
            if arg is None and p in params and params.index(p) < len(call.args):
                arg = call.args[params.index(p)]
            if arg is not None and not isinstance(arg, ast.Starred):
                first = call.args[0] if call.args and call.args[0] is not arg else None
                return arg, first if method else None, f"{label} (which slices `{p}[..., 1:]`, {_where(m, program, fn)})"
        return None


_LIBRARY_ROOTS = {"torch", "F", "nn", "np", "numpy", "math", "os", "re", "json", "logging", "logger", "warnings", "itertools", "functools", "collections", "random", "time", "sys"}


def _could_shift(m, call: ast.Call) -> bool:
    """Could this call shift one of its arguments: it passes ``labels=``/``**batch``, or calls something of the
    project (a function, a class, a model attribute) rather than a torch/numpy/builtin function or a tensor method?"""
    if any(kw.arg in ("labels", None) for kw in call.keywords):
        return True
    if len(call.args) + len(call.keywords) < 2:
        return False  # a shift needs the inputs and the labels
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in m.functions or func.id in m.classes or (func.id in m.imports.sources and m.imports.sources[func.id][0].split(".")[0] not in _LIBRARY_ROOTS)
    if isinstance(func, ast.Attribute):
        q = m.imports.qualify(func) or ""
        if q.split(".")[0] in _LIBRARY_ROOTS or isinstance(func.value, (ast.Call, ast.Subscript, ast.Constant)):
            return False
        return True
    return False


class _Tracer:
    """Where a tensor's positions come from: slices of a base, shifted copies, or loader batch elements."""

    def __init__(self, m) -> None:
        self.m = m
        self._memo: dict[tuple[int, int], Origin] = {}

    def origin(self, program, expr: Optional[ast.AST], depth: int = 0) -> Origin:
        if expr is None or depth > MAX_DEPTH:
            return None
        key = (id(program), id(expr))
        if key not in self._memo:
            self._memo[key] = None  # recursion guard
            self._memo[key] = self._origin(program, expr, depth)
        return self._memo[key]

    def _origin(self, program, expr: ast.AST, depth: int) -> Origin:
        values = getattr(program, "values", None)
        if values is None:
            return None
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in _KEEP:
                return self.origin(program, func.value, depth + 1)
            q = program.imports.qualify(func) or ""
            if q == "torch.roll" or isinstance(func, ast.Attribute) and func.attr == "roll" and not _is_module(program, func.value):
                # `torch.roll(ids, -1, 1)` / `ids.roll(-1, 1)`: the inputs moved one position left
                method = q != "torch.roll"
                base = func.value if method else (expr.args[0] if expr.args else None)
                rest = expr.args if method else expr.args[1:]
                shifts = rest[0] if rest else next((k.value for k in expr.keywords if k.arg == "shifts"), None)
                return Shifted(_key(program, base), expr, program) if base is not None and _is_minus_one(shifts) else None
            name = (program.imports.qualify(func) or "").rsplit(".", 1)[-1]
            if name in _WRAP and expr.args:
                inner = expr.args[0]
                if isinstance(inner, ast.ListComp) and name in ("stack", "cat", "concatenate", "tensor", "array"):
                    return self.origin(program, inner.elt, depth + 1)
                return self.origin(program, inner, depth + 1)
            return None
        if isinstance(expr, ast.Subscript):
            window = _window(program, expr)
            if window is not None:
                return window
            base = self.origin(program, expr.value, depth + 1)
            key = expr.slice.value if isinstance(expr.slice, ast.Constant) else None
            if isinstance(base, Item) and base.key is None and isinstance(key, (int, str)):
                return Item(base.loop, key, program)
            return None
        if isinstance(expr, ast.Name):
            shifted = _shifted_in_place(program, expr)
            if shifted is not None:
                return shifted
            d = values.definition(expr)
            if d is not None:
                stmt, index = d
                value = getattr(stmt, "value", None)
                if index is None:
                    return self.origin(program, value, depth + 1)
                if isinstance(value, ast.Tuple) and index < len(value.elts):
                    return self.origin(program, value.elts[index], depth + 1)
                inner = self.origin(program, value, depth + 1)
                if isinstance(inner, Item) and inner.key is None:
                    return Item(inner.loop, index, program)  # `x, y = batch`
                return self._returned(program, value, index, depth)
            return _loop_item(program, expr)
        return None

    def _returned(self, program, value: Optional[ast.AST], index: int, depth: int) -> Origin:
        """``x, y = get_batch("train")`` with ``get_batch`` readable: what it returns at ``index``."""
        if not isinstance(value, ast.Call) or depth > MAX_DEPTH:
            return None
        found = program.resolve(value.func) if isinstance(value.func, ast.Name) else None
        if found is None or not isinstance(found[1], (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        other, fn = found
        table = getattr(other, "values", None)
        if table is None:
            return None
        origins = []
        for ret in table.returns(fn):
            if not isinstance(ret.value, ast.Tuple) or index >= len(ret.value.elts):
                return None
            origins.append(self.origin(other, ret.value.elts[index], depth + 1))
        return origins[0] if origins and all(o == origins[0] for o in origins) else None

    # -- pairing ---------------------------------------------------------------------------------------
    def double_shift(self, m, labels: Origin, inputs: Optional[ast.AST], call: ast.Call) -> Optional[str]:
        """How ``labels`` is provably a one-token shift of the inputs: a sentence for the message, or None."""
        if isinstance(labels, Window):
            if inputs is not None:
                head = self.origin(m, inputs)
                if isinstance(head, Window) and _pair(head, labels):
                    return f"`{_text(labels)}` on {_where(m, labels.program, labels.node)}, against the inputs `{_text(head)}`"
                return None
            # A loss helper (no inputs to compare): the head half must be sliced in the same function.
            fn = m.enclosing_function(call)
            for node in m.index.within(fn, ast.Subscript) if fn is not m.tree else m.nodes(ast.Subscript):
                head = _window(m, node)
                if head is not None and _pair(head, labels):
                    return f"`{_text(labels)}`, with the inputs `{_text(head)}` on line {node.lineno}"
            return None
        if isinstance(labels, Shifted):
            if inputs is not None and _key(m, inputs) == labels.base:
                return f"`{ast.unparse(labels.node)}` on {_where(m, labels.program, labels.node)} is the inputs moved one position left"
            return None
        if isinstance(labels, Item):
            return self._dataset_pair(m, labels, inputs)
        return None

    def _dataset_pair(self, m, labels: Item, inputs: Optional[ast.AST]) -> Optional[str]:
        loop = labels.loop
        program = labels.program
        if inputs is None and labels.key is None:
            keys: tuple = ("input_ids", "labels")  # `model(**batch)`
        else:
            head = self.origin(program, inputs) if inputs is not None else None
            if not isinstance(head, Item) or head.loop is not loop or labels.key is None:
                return None
            keys = (head.key, labels.key)
        calls = loaders_reaching(program, loop_iterated(loop))
        if not calls:
            return None
        for c in calls:
            if c.has_star_kwargs or c.keyword("collate_fn") is not None or len(c.node.args) > 6:
                return None
            classes = dataset_classes(program, c.dataset)
            if not classes:
                return None
            for dprog, cls in classes:
                found = dprog.class_method(cls, "__getitem__")
                if found is None:
                    return None
                gprog, getitem = found
                pair = self._returned_pair(gprog, getitem, keys)
                if pair is None:
                    return None
        head, tail = pair
        return (
            f"`{cls.name}.__getitem__` returns `{_text(tail)}` as the labels and `{_text(head)}` as the inputs, "
            f"{_where(m, gprog, tail.node)}"
        )

    def _returned_pair(self, program, fn, keys) -> Optional[tuple[Window, Window]]:
        table = getattr(program, "values", None)
        if table is None:
            return None
        pairs = []
        for ret in table.returns(fn):
            value = ret.value
            if isinstance(value, ast.Name):
                d = table.definition(value)
                value = getattr(d[0], "value", None) if d is not None and d[1] is None else value
            parts: dict = {}
            if isinstance(value, ast.Tuple):
                parts = dict(enumerate(value.elts))
            elif isinstance(value, ast.Dict):
                parts = {k.value: v for k, v in zip(value.keys, value.values) if isinstance(k, ast.Constant)}
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
                parts = {kw.arg: kw.value for kw in value.keywords if kw.arg}
            if keys[0] not in parts or keys[1] not in parts:
                return None
            head = self.origin(program, parts[keys[0]])
            tail = self.origin(program, parts[keys[1]])
            if not (isinstance(head, Window) and isinstance(tail, Window) and _pair(head, tail)):
                return None
            pairs.append((head, tail))
        return pairs[0] if pairs else None


# -- slices ------------------------------------------------------------------------------------------------
def _window(program, sub: ast.Subscript) -> Optional[Window]:
    """``x[:, 1:]``, ``x[..., :-1]``, ``x[1:]``, ``data[i:i + n]``: a slice of the last (or only) dimension."""
    sl = sub.slice
    if isinstance(sl, ast.Tuple):
        if len(sl.elts) != 2:
            return None
        first, sl = sl.elts
        whole = isinstance(first, ast.Slice) and first.lower is None and first.upper is None and first.step is None
        if not (whole or isinstance(first, ast.Constant) and first.value is Ellipsis):
            return None
    if not isinstance(sl, ast.Slice) or sl.step is not None:
        return None
    if sl.lower is None and sl.upper is None:
        return None
    lower = _bound(sl.lower, end=False)
    upper = _bound(sl.upper, end=True)
    if lower is None or upper is None:
        return None
    return Window(_key(program, sub.value), lower, upper, sub, program)


def _bound(node: Optional[ast.AST], end: bool) -> Optional[Bound]:
    """A slice bound as (sorted terms, constant): ``i + 1 + n`` -> (("i", "n"), 1); None upper -> (("<end>",), 0)."""
    if node is None:
        return (("<end>",), 0) if end else ((), 0)
    terms: list[str] = []
    const = 0

    def add(n: ast.AST, sign: int) -> bool:
        nonlocal const
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            const += sign * n.value
            return True
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return add(n.operand, -sign)
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
            return add(n.left, sign) and add(n.right, sign if isinstance(n.op, ast.Add) else -sign)
        if sign < 0:
            return False
        terms.append(ast.unparse(n))
        return True

    if not add(node, 1):
        return None
    if end and not terms and const < 0:
        terms.append("<end>")  # `x[:-1]`: counted from the end
    return tuple(sorted(terms)), const


def _pair(head: Window, tail: Window) -> bool:
    """``tail`` holds the positions of ``head`` moved one to the right (same base)."""
    return (
        head.base == tail.base
        and tail.lower == (head.lower[0], head.lower[1] + 1)
        and tail.upper == (head.upper[0], head.upper[1] + 1)
    )


def _key(program, expr: ast.AST) -> str:
    """A comparable text for a base tensor: through plain assignments of names (``ids = batch["input_ids"]``)."""
    values = getattr(program, "values", None)
    for _ in range(4):
        if not isinstance(expr, ast.Name) or values is None:
            break
        value = values.value_of(expr)
        if value is None or not isinstance(value, (ast.Name, ast.Subscript, ast.Attribute)):
            break
        expr = value
    return ast.unparse(expr)


def _text(w: Window) -> str:
    return ast.unparse(w.node)


def _is_minus_one(node: Optional[ast.AST]) -> bool:
    return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) and node.operand.value == 1


def _is_module(program, node: ast.AST) -> bool:
    return (program.imports.qualify(node) or "") in ("torch", "numpy", "np")


_SLICE_ASSIGNMENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _slice_assignments(program, fn: ast.AST) -> dict[str, list[ast.Assign]]:
    """``name[...] = ...`` statements of ``fn``, by ``name`` (computed once per function)."""
    table = _SLICE_ASSIGNMENTS.setdefault(program, {})
    if id(fn) not in table:
        nodes = program.index.within(fn, ast.Assign) if fn is not program.tree else program.nodes(ast.Assign)
        found: dict[str, list[ast.Assign]] = {}
        for node in nodes:
            if len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript) and isinstance(node.targets[0].value, ast.Name):
                found.setdefault(node.targets[0].value.id, []).append(node)
        table[id(fn)] = found
    return table[id(fn)]


def _shifted_in_place(program, name: ast.Name) -> Optional[Shifted]:
    """``labels = ids.clone(); labels[:, :-1] = ids[:, 1:]``: ``labels`` is ``ids`` moved one position left."""
    fn = program.enclosing_function(name)
    for node in _slice_assignments(program, fn).get(name.id, ()):
        if node.lineno >= name.lineno:
            continue
        target = node.targets[0]
        if not (isinstance(target.value, ast.Name) and target.value.id == name.id and isinstance(node.value, ast.Subscript)):
            continue
        head = _window(program, target)
        tail = _window(program, node.value)
        if head is None or tail is None:
            continue
        if head.lower == ((), 0) and head.upper == (("<end>",), -1) and tail.lower == ((), 1) and tail.upper == (("<end>",), 0):
            return Shifted(tail.base, node, program)
    return None


def _loop_item(program, name: ast.Name) -> Origin:
    """A name bound by the target of a ``for`` loop around it: ``for x, y in loader`` / ``for i, (x, y) in
    enumerate(loader)`` / ``for batch in loader``."""
    for anc in program.index.ancestors(name):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return None
        if not isinstance(anc, (ast.For, ast.AsyncFor)):
            continue
        target, it = anc.target, anc.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate" and isinstance(target, ast.Tuple) and len(target.elts) == 2:
            target = target.elts[1]
        if isinstance(target, ast.Name) and target.id == name.id:
            return Item(anc, None, program)
        if isinstance(target, (ast.Tuple, ast.List)):
            for i, elt in enumerate(target.elts):
                if isinstance(elt, ast.Name) and elt.id == name.id:
                    return Item(anc, i, program)
        if name.id in {n.id for n in ast.walk(anc.target) if isinstance(n, ast.Name)}:
            return None
    return None


# -- who shifts ----------------------------------------------------------------------------------------------
def _causal_lm(built) -> bool:
    q = built.qualified
    parts = q.split(".")
    if parts[0] not in ("transformers", "peft"):
        return False
    name = parts[-1]
    if name in ("from_pretrained", "from_config") and len(parts) >= 2:
        name = parts[-2]
    return bool(_CAUSAL_LM.search(name)) or name in ("AutoModelForCausalLM", "AutoPeftModelForCausalLM")


def _ctor_text(built) -> str:
    parts = built.qualified.split(".")
    return ".".join(parts[-2:]) if parts[-1] in ("from_pretrained", "from_config") else parts[-1]


def _readable_callee(m, call: ast.Call, callee: ast.AST):
    """(program, function, is_method, description) for a model class's forward or a function we can read."""
    if isinstance(callee, ast.Name):
        found = m.resolve_name(callee.id) if callee.id not in m.objects.objects else None
        if found is not None and isinstance(found[1], (ast.FunctionDef, ast.AsyncFunctionDef)):
            return found[0], found[1], False, f"`{callee.id}()`"
    if isinstance(callee, ast.Attribute) and isinstance(callee.value, ast.Name) and callee.value.id == "self":
        owner = m.class_of_receiver(callee.value, call)
        found = owner[0].class_method(owner[1], callee.attr) if owner is not None else None
        if found is not None:
            return found[0], found[1], True, f"`self.{callee.attr}()`"
    key = receiver_key(callee) if isinstance(callee, (ast.Name, ast.Attribute)) else None
    if key is None or m.objects.kind(key) != K.MODEL:
        return None
    ref = m.values.module_of(callee)
    if ref is not None and ref.cls is not None:
        found = ref.program.class_method(ref.cls, "forward")
        if found is not None:
            return found[0], found[1], True, f"`{ast.unparse(callee)}` (a `{ref.cls.name}`, whose forward)"
    return None


def _tail_sliced_params(program, fn: ast.AST) -> list[str]:
    """Parameters of ``fn`` shifted the way a causal-LM loss shifts its labels: ``labels[..., 1:]`` while
    another parameter (the logits) is cut ``logits[..., :-1, :]`` in the same function."""
    params = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
    tails: list[str] = []
    heads: set[str] = set()
    for sub in program.index.within(fn, ast.Subscript):
        if not (isinstance(sub.value, ast.Name) and sub.value.id in params) or not isinstance(sub.slice, ast.Tuple):
            continue
        cut = _batched_cut(sub.slice)
        if cut == "tail" and sub.value.id not in tails:
            tails.append(sub.value.id)
        elif cut == "head":
            heads.add(sub.value.id)
    return [t for t in tails if heads - {t}]


def _batched_cut(sl: ast.Tuple) -> Optional[str]:
    """``[..., 1:]`` / ``[:, 1:]`` -> "tail"; ``[..., :-1, :]`` / ``[:, :-1]`` -> "head"; else None."""
    cuts = []
    for elt in sl.elts:
        if isinstance(elt, ast.Constant) and elt.value is Ellipsis:
            continue
        if not isinstance(elt, ast.Slice) or elt.step is not None:
            return None
        if elt.lower is None and elt.upper is None:
            continue
        if elt.upper is None and isinstance(elt.lower, ast.Constant) and elt.lower.value == 1:
            cuts.append("tail")
        elif elt.lower is None and _is_minus_one(elt.upper):
            cuts.append("head")
        else:
            return None
    return cuts[0] if len(cuts) == 1 else None


def _where(m, program, node) -> str:
    line = getattr(node, "lineno", 0)
    if program is m or program is None or not getattr(program, "path", None):
        return f"line {line}"
    return f"{os.path.basename(program.path)}:{line}"
