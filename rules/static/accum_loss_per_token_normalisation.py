"""accum-loss-per-token-normalisation: token losses averaged per micro-batch, then over the micro-batches of a window."""

from __future__ import annotations

import ast
import os
import re
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.events import BACKWARD, Event
from doctor.analysis.names import receiver_key
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Factors that count the micro-batches of a window.
_WINDOW = re.compile(r"accum|grad_?acc|micro|gradient_accumulation|accumulation", re.I)
#: Models whose loss is a mean over tokens (labels padded or masked with -100).
_TOKEN_MODEL = re.compile(r"CausalLM|LMHeadModel|Seq2SeqLM|MaskedLM|ForConditionalGeneration|ForTokenClassification|ForPreTraining")
#: Data collators that pad labels with -100 (so micro-batches hold different numbers of real tokens).
_PADDING_COLLATORS = {
    "DataCollatorForLanguageModeling", "DataCollatorForSeq2Seq", "DataCollatorForTokenClassification",
    "DataCollatorForCompletionOnlyLM", "DataCollatorForWholeWordMask", "pad_sequence",
}
#: Framework calls that hand back the object they are given.
_PASS_THROUGH = {"prepare", "prepare_model", "wrap", "setup", "setup_module"}
#: Names that count tokens: a loss multiplied or divided by one is already weighted per token.
_TOKEN_COUNT = re.compile(
    r"n_?tok|num_?tok|tokens?_?(count|num|total)|total_?tokens|window_?tokens|batch_?tokens|num_items|n_?items|mask\.sum"
    r"|n_?targets|num_targets|n_?words|num_?valid|n_?valid",
    re.I,
)


class AccumLossPerTokenNormalisation(Rule):
    name = "accum-loss-per-token-normalisation"
    code = "DR204"
    severity = Severity.WARNING
    summary = "Under gradient accumulation, a per-token mean loss is averaged per micro-batch and then divided by the number of micro-batches."
    why = """
        A language model's loss (`outputs.loss`, `F.cross_entropy(..., ignore_index=-100)`) is the mean over the
        real tokens of *its own* micro-batch. With padding or masked labels, micro-batches hold different numbers
        of tokens; dividing each micro-batch mean by the number of micro-batches then gives every micro-batch the
        same weight, so a token in a short micro-batch counts more than a token in a long one. The accumulated
        gradient is not the gradient of the large batch it imitates, and training with accumulation differs from
        training without it: this was the 2024 gradient-accumulation bug in transformers' `Trainer`, fixed by
        passing `num_items_in_batch`. Correct: sum the token losses of the window (`reduction="sum"`) and divide
        by the number of real tokens in the whole window.
    """
    known_problems = """
        Reported for a backward pass that doctor sees accumulating (see `unscaled-accumulation-loss`, or inside
        `accelerator.accumulate(...)` with an `Accelerator(gradient_accumulation_steps=...)`, which divides the
        loss by the number of steps itself) whose loss is divided by a factor named for the window
        (`/ gradient_accumulation_steps`, `/= accum_iter`) and is a per-token mean: the `.loss` (or first output)
        of a transformers model whose class says it predicts tokens (`...ForCausalLM`, `...LMHeadModel`,
        `...ForSeq2SeqLM`, `...ForMaskedLM`, `...ForConditionalGeneration`, `...ForTokenClassification`), found
        through the constructor of the model object; or a cross-entropy with the default mean reduction over
        flattened token logits (`logits.view(-1, vocab)`). The code around the loop (the training function, its
        class, module-level code, and the functions of the file they name, such as a collate function) must also
        show that token counts vary: labels set to `-100`, a padding collator (`DataCollatorForLanguageModeling`,
        `...ForSeq2Seq`, `pad_sequence`), `padding=True`/`"longest"`, or an `ignore_index` other than `-1`. Fixed-length batches
        (random crops of a token stream, as in nanoGPT) have no such evidence and stay silent, and so does a loss
        already weighted by a token count (`num_items_in_batch`, `reduction="sum"`, a factor named for tokens). A
        loss computed inside a model's own `forward` is not read, and padding done in another file is not seen.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch.nn.utils.rnn import pad_sequence

        vocab, accum_steps = 100, 4
        model = torch.nn.Sequential(torch.nn.Embedding(vocab, 32), torch.nn.Linear(32, vocab))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        docs = [torch.randint(0, vocab, (int(n),)) for n in torch.randint(5, 50, (64,))]
        batches = [pad_sequence(docs[i:i + 4], batch_first=True, padding_value=-100) for i in range(0, 64, 4)]

        for step, batch in enumerate(batches):
            inputs = batch[:, :-1].clamp(min=0)
            labels = batch[:, 1:]
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100)
            (loss / accum_steps).backward()
            if (step + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch.nn.utils.rnn import pad_sequence

        vocab, accum_steps = 100, 4
        model = torch.nn.Sequential(torch.nn.Embedding(vocab, 32), torch.nn.Linear(32, vocab))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        docs = [torch.randint(0, vocab, (int(n),)) for n in torch.randint(5, 50, (64,))]
        batches = [pad_sequence(docs[i:i + 4], batch_first=True, padding_value=-100) for i in range(0, 64, 4)]

        for step, batch in enumerate(batches):
            if step % accum_steps == 0:
                window = batches[step:step + accum_steps]
                window_tokens = sum(int((b[:, 1:] != -100).sum()) for b in window)
            inputs = batch[:, :-1].clamp(min=0)
            labels = batch[:, 1:]
            logits = model(inputs)
            loss_sum = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100, reduction="sum")
            (loss_sum / window_tokens).backward()
            if (step + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    fires = (
        # A transformers causal LM with a padding collator.
        """
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling

model = AutoModelForCausalLM.from_pretrained("gpt2")
loader = DataLoader(ds, batch_size=8, collate_fn=DataCollatorForLanguageModeling(tok, mlm=False))
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
for step, batch in enumerate(loader):
    outputs = model(**batch)
    loss = outputs.loss / args.gradient_accumulation_steps
    loss.backward()
    if (step + 1) % args.gradient_accumulation_steps == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        # Accelerate divides by gradient_accumulation_steps itself.
        """
from accelerate import Accelerator
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

accelerator = Accelerator(gradient_accumulation_steps=8)
model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
for batch in loader:
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
""",
    )
    silent = (
        # Fixed-length crops of a token stream: every micro-batch has the same number of tokens.
        """
import torch
import torch.nn.functional as F
for it in range(max_iters):
    for micro_step in range(gradient_accumulation_steps):
        x, y = get_batch("train")
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss = loss / gradient_accumulation_steps
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
""",
        # Summed token losses divided by the tokens of the whole window.
        """
import torch
import torch.nn.functional as F
for step, batch in enumerate(loader):
    labels = batch["labels"]
    labels[labels == tokenizer.pad_token_id] = -100
    logits = model(batch["input_ids"]).logits
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100, reduction="sum")
    (loss / window_tokens).backward()
    if (step + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        # num_items_in_batch given to the model.
        """
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
for step, batch in enumerate(loader):
    batch["labels"][batch["attention_mask"] == 0] = -100
    loss = model(**batch, num_items_in_batch=n_items).loss
    (loss / accum_steps).backward()
    if (step + 1) % accum_steps == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        # Sequence classification: one label per sample, equal-sized micro-batches.
        """
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")
for step, batch in enumerate(loader):
    enc = tokenizer(batch["text"], padding=True, return_tensors="pt")
    loss = model(**enc, labels=batch["label"]).loss / accum_steps
    loss.backward()
    if (step + 1) % accum_steps == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
    )

    def check(self, ctx):
        text = ctx.source.text
        if not ("accum" in text.lower() or "micro" in text.lower()):
            return
        m = ctx.model
        seen: set[int] = set()
        for events, stepped, acc in m.accumulations():
            for b in acc.backwards:
                if id(b.node) in seen:
                    continue
                expr, at = b.loss_here
                if b.flavor in ("deepspeed", "dist"):
                    continue
                division = _window_division(m, _unscaled(expr), at)
                if division is None:
                    continue
                divisor, inner = division
                mean = _token_mean(m, inner)
                if mean is None:
                    continue
                variable = _variable_token_counts(m, b)
                if variable is None:
                    continue
                seen.add(id(b.node))
                yield self._finding(ctx, b, b.anchor, f"`{ctx.segment(expr) or 'the loss'}` divides {mean} by `{divisor}`", variable)
        for ev in m.all_events():
            if ev.kind != BACKWARD or ev.flavor != "accelerate" or not ev.in_accumulate_context or id(ev.node) in seen:
                continue
            steps = _accelerator_steps(m, ev)
            if steps is None:
                continue
            expr, at = ev.loss_here
            if _window_division(m, _unscaled(expr), at) is not None:
                continue  # divided by hand as well: another mistake (unscaled-accumulation-loss' cousin), not this one
            mean = _token_mean(m, expr)
            if mean is None:
                continue
            variable = _variable_token_counts(m, ev)
            if variable is None:
                continue
            seen.add(id(ev.node))
            yield self._finding(
                ctx, ev, ev.anchor,
                f"`{ctx.segment(ev.node)}` divides {mean} by `gradient_accumulation_steps={steps}` (Accelerate does, inside `accumulate`)",
                variable,
            )

    def _finding(self, ctx, ev: Event, node: ast.AST, what: str, variable: str):
        return self.finding(
            ctx,
            node,
            f"{what}: each micro-batch's mean gets the same weight whatever its number of real tokens ({variable}), so "
            "the accumulated gradient is not the full batch's; sum the token losses (`reduction=\"sum\"`) and divide by "
            "the window's token count, or pass `num_items_in_batch`",
        )


def _unscaled(expr: Optional[ast.AST]) -> Optional[ast.AST]:
    """``scaler.scale(x)`` -> ``x``."""
    while isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "scale" and expr.args:
        expr = expr.args[0]
    return expr


def _window_division(m, expr: Optional[ast.AST], at: ast.AST, depth: int = 0) -> Optional[tuple[str, ast.AST]]:
    """``(divisor, dividend)`` when ``expr`` is a loss divided by the number of micro-batches (``loss / accum``),
    through assignments (``loss = loss / accum``, ``loss /= accum``) of the function."""
    if expr is None or depth > 4:
        return None
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div):
        divisor = ast.unparse(expr.right)
        if _WINDOW.search(divisor) and not _TOKEN_COUNT.search(divisor):
            return divisor, expr.left
        return None
    if isinstance(expr, ast.Name) and m.owns(expr):
        best = _reaching(m, expr)
        if isinstance(best, ast.AugAssign) and isinstance(best.op, ast.Div):
            divisor = ast.unparse(best.value)
            if _WINDOW.search(divisor) and not _TOKEN_COUNT.search(divisor):
                return divisor, ast.copy_location(ast.Name(id=expr.id, ctx=ast.Load()), best.target)
            return None
        d = m.values.definition(expr)
        if d is not None and d[1] is None:
            return _window_division(m, d[0].value, d[0], depth + 1)
    return None


def _reaching(m, name: ast.Name) -> Optional[ast.AST]:
    """The last statement of the function that binds ``name`` before it is read (not the one reading it)."""
    fn = m.enclosing_function(name)
    pos = (name.lineno, name.col_offset)
    around = {id(a) for a in m.index.ancestors(name)}
    best = None
    for stmt in m.values.bindings(fn).get(name.id, ()):
        if id(stmt) in around or (stmt.lineno, stmt.col_offset) >= pos:
            continue
        if best is None or (stmt.lineno, stmt.col_offset) > (best.lineno, best.col_offset):
            best = stmt
    return best


def _token_mean(m, expr: ast.AST, depth: int = 0) -> Optional[str]:
    """What makes ``expr`` a mean over the tokens of one micro-batch, in the code's words; None otherwise."""
    if depth > 4:
        return None
    if isinstance(expr, ast.Name):
        if not m.owns(expr):
            return None
        best = _reaching(m, expr)
        if isinstance(best, ast.Assign) and len(best.targets) == 1 and isinstance(best.targets[0], ast.Name):
            return _token_mean(m, best.value, depth + 1)
        if isinstance(best, ast.Assign) and len(best.targets) == 1 and isinstance(best.targets[0], (ast.Tuple, ast.List)):
            return None
        return None
    if _TOKEN_COUNT.search(ast.unparse(expr)):
        return None  # already weighted by a token count
    if isinstance(expr, ast.Attribute) and expr.attr == "loss":
        return _lm_output(m, expr.value, depth)
    if isinstance(expr, ast.Subscript):
        sl = expr.slice
        if isinstance(sl, ast.Constant) and sl.value in ("loss", 0):
            return _lm_output(m, expr.value, depth)
        return None
    if isinstance(expr, ast.Call):
        kind = m.values.loss_kind(expr)
        if kind == "cross_entropy" or (kind == "" and (m.imports.qualify(expr.func) or "").endswith(("nll_loss", "NLLLoss"))):
            return _token_cross_entropy(m, expr)
    return None


def _lm_output(m, value: ast.AST, depth: int) -> Optional[str]:
    """``value`` is the output of a token-predicting transformers model (``outputs = model(**batch)``)."""
    call = value
    if isinstance(value, ast.Name):
        d = m.values.definition(value)
        if d is None or d[1] is not None:
            return None
        call = d[0].value
    if not isinstance(call, ast.Call):
        return None
    if any(kw.arg == "num_items_in_batch" for kw in call.keywords):
        return None
    func = call.func.value if isinstance(call.func, ast.Attribute) and call.func.attr == "forward" else call.func
    key = receiver_key(func)
    found = _model_ctor(m, key, call) if key else None
    if found is None:
        return None
    program, ctor = found
    text = program.imports.qualify(ctor.func) or ""
    name = next((p for p in text.split(".") if _TOKEN_MODEL.search(p)), None)
    if name is None:
        return None
    where = f"line {ctor.lineno}" if program is m else f"{os.path.basename(program.path or '')}:{ctor.lineno}"
    return f"the per-token mean loss of the `{name}` (built on {where})"


def _model_ctor(m, key: str, at: ast.AST, depth: int = 0):
    """``(program, call)`` that built the model object ``key`` used at ``at``: its binding in that function, or for a
    parameter what every caller passes (when they agree)."""
    fn = m.enclosing_function(at)
    head = key.split(".", 1)[0]
    if head == key and fn is not m.tree and key in {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs} and not m.rebinds(fn, key):
        if depth >= 3:
            return None
        found = None
        for program, value in m.argument_values(fn, key):
            sub = _model_ctor(program, receiver_key(value), value, depth + 1) if receiver_key(value) else (
                (program, K.unwrap_moves(value)) if isinstance(value, ast.Call) else None
            )
            if sub is None or (found is not None and sub[1] is not found[1]):
                return None
            found = sub
        return found
    ctor = _binding_before(m, key, at)
    if ctor is None:
        return None
    if isinstance(ctor.func, ast.Attribute) and ctor.func.attr in _PASS_THROUGH and depth < 3:
        # `model = accelerator.prepare(model)`, `model, opt, dl = accelerator.prepare(model, opt, dl)`.
        arg = ctor.args[0] if len(ctor.args) == 1 else _tuple_argument(m, ctor, key)
        if arg is not None and receiver_key(arg):
            return _model_ctor(m, receiver_key(arg), ctor, depth + 1)
        return None
    return m, ctor


def _binding_before(m, key: str, at: ast.AST) -> Optional[ast.Call]:
    """The last constructor call bound to ``key`` before ``at``, in ``at``'s function when it binds one there."""
    fn = m.enclosing_function(at)
    if "." not in key and m.owns(at):
        # A local name: its assignments in this function decide (the object table keeps one binding per name).
        pos = (getattr(at, "lineno", 0), getattr(at, "col_offset", 0))
        around = {id(a) for a in m.index.ancestors(at)}
        last = None
        for stmt in m.values.bindings(fn).get(key, ()):
            if id(stmt) not in around and (stmt.lineno, stmt.col_offset) < pos and (last is None or (stmt.lineno, stmt.col_offset) > (last.lineno, last.col_offset)):
                last = stmt
        if last is not None:
            value = getattr(last, "value", None)
            value = K.unwrap_moves(value) if value is not None else None
            return value if isinstance(value, ast.Call) else None
    if key.startswith("self.") and key.count(".") == 1:
        cls = m.class_of(fn)
        values = m.values.self_attrs.get(cls or "", {}).get(key.split(".", 1)[1], [])
        if len(values) == 1:
            value = K.unwrap_moves(values[0])
            return value if isinstance(value, ast.Call) else None
    pos = (getattr(at, "lineno", 0), getattr(at, "col_offset", 0))
    bound = [i for i in m.objects.history.get(key, []) if isinstance(i.node, ast.Call) and m.owns(i.node)]
    local = [i for i in bound if m.enclosing_function(i.node) is fn]
    best = None
    for info in local or bound:
        if info.node is at or (info.node.lineno, info.node.col_offset) >= pos and fn is m.enclosing_function(info.node):
            continue
        if best is None or (info.node.lineno, info.node.col_offset) > (best.lineno, best.col_offset):
            best = info.node
    return K.unwrap_moves(best) if best is not None else None  # type: ignore[return-value]


def _tuple_argument(m, call: ast.Call, key: str) -> Optional[ast.AST]:
    parent = m.index.parent(call)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], (ast.Tuple, ast.List)):
        for i, elt in enumerate(parent.targets[0].elts):
            if receiver_key(elt) == key and i < len(call.args):
                return call.args[i]
    return None


def _token_cross_entropy(m, call: ast.Call) -> Optional[str]:
    """A cross-entropy with mean reduction over flattened token logits: ``F.cross_entropy(logits.view(-1, V), y.view(-1))``."""
    reduction = next((kw.value for kw in call.keywords if kw.arg == "reduction"), None)
    ctor = m.values.module_ctor(call.func) if not isinstance(call.func, ast.Attribute) or receiver_key(call.func) else None
    if reduction is None and ctor is not None:
        reduction = next((kw.value for kw in ctor.keywords if kw.arg == "reduction"), None)
    if reduction is not None and not (isinstance(reduction, ast.Constant) and reduction.value == "mean"):
        return None
    inp = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "input"), None)
    if inp is None or not _flattened_tokens(m, inp):
        return None
    return f"the per-token mean of `{ast.unparse(call.func)}` over this micro-batch"


def _flattened_tokens(m, expr: ast.AST, depth: int = 0) -> bool:
    """``logits.view(-1, V)``, ``logits.reshape(-1, logits.size(-1))``, ``logits.flatten(0, 1)``: token rows."""
    if depth > 3:
        return False
    if isinstance(expr, ast.Name):
        d = m.values.definition(expr)
        return d is not None and d[1] is None and _flattened_tokens(m, d[0].value, depth + 1)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        attr = expr.func.attr
        if attr in ("view", "reshape") and len(expr.args) == 2:
            first = expr.args[0]
            return isinstance(first, ast.UnaryOp) and isinstance(first.op, ast.USub) and isinstance(first.operand, ast.Constant) and first.operand.value == 1
        if attr == "flatten" and len(expr.args) == 2:
            return all(isinstance(a, ast.Constant) for a in expr.args) and [a.value for a in expr.args] == [0, 1]
    return False


def _scopes(m, ev: Event) -> set[int]:
    """Where to look for the data's padding: the function(s) of the backward (its own and the stream's), their
    classes, module-level code, and the functions of this file they name (a collate function)."""
    fns = {m.enclosing_function(ev.anchor)}
    if m.owns(ev.node):
        fns.add(m.enclosing_function(ev.node))
    scopes: set[int] = {id(m.tree)}
    for fn in fns:
        scopes.add(id(fn))
        cls = m.class_of(fn)
        if cls is not None and cls in m.classes:
            scopes.add(id(m.classes[cls]))
    for fn in list(fns):
        owner = m.classes.get(m.class_of(fn) or "") or fn
        for name in m.index.within(owner, ast.Name) if owner is not m.tree else ():
            target = m.functions.get(name.id)
            if target is not None:
                scopes.add(id(target))
    return scopes


def _in_scopes(m, node: ast.AST, scopes: set[int]) -> bool:
    for anc in m.index.ancestors(node):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if id(anc) in scopes:
                return True
            if isinstance(anc, ast.ClassDef):
                return False
    return id(m.tree) in scopes and m.enclosing_function(node) is m.tree


def _variable_token_counts(m, ev: Event) -> Optional[str]:
    """Evidence that micro-batches hold different numbers of real tokens, in the code's words: in the training
    function, its class, module-level code, or the functions they name."""
    scopes = _scopes(m, ev)
    for node in m.index.of(ast.UnaryOp):
        if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) and node.operand.value == 100 and _in_scopes(m, node, scopes):
            return f"labels are masked with -100 on line {node.lineno}"
    for call in m.index.of(ast.Call):
        if not _in_scopes(m, call, scopes):
            continue
        name = (m.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
        if name in _PADDING_COLLATORS:
            return f"`{name}` pads the batches (line {call.lineno})"
        for kw in call.keywords:
            if kw.arg == "padding" and isinstance(kw.value, ast.Constant) and kw.value.value in (True, "longest"):
                return f"`padding={kw.value.value!r}` on line {call.lineno}"
            if kw.arg == "ignore_index" and not (isinstance(kw.value, ast.UnaryOp) and isinstance(kw.value.operand, ast.Constant) and kw.value.operand.value == 1):
                return f"`ignore_index={ast.unparse(kw.value)}` on line {call.lineno}"
    return None


def _accelerator_steps(m, ev: Event) -> Optional[str]:
    """``gradient_accumulation_steps`` of the ``Accelerator`` whose ``backward`` this is, when it is not 1."""
    info = m.info(ev.target)
    call = info.node if info is not None else None
    if not isinstance(call, ast.Call) or not info.ctor.endswith("Accelerator"):
        return None
    value = next((kw.value for kw in call.keywords if kw.arg == "gradient_accumulation_steps"), None)
    if value is None or (isinstance(value, ast.Constant) and value.value == 1):
        return None
    return ast.unparse(value)
