"""weight-decay-on-norm-and-bias: decoupled weight decay on every parameter of a transformer-style model."""

from __future__ import annotations

import ast
import os
import re
from typing import Optional

from doctor.analysis.layers import Layers, built_by, source_mentions
from doctor.analysis.values import literal_number
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Decoupled-decay optimizers and their default weight decay (None: the library's default is unknown here).
_DECOUPLED = {
    "torch.optim.AdamW": 0.01, "torch.optim.adamw.AdamW": 0.01, "transformers.AdamW": 0.0,
    "transformers.optimization.AdamW": 0.0, "bitsandbytes.optim.AdamW": 0.01, "bitsandbytes.optim.AdamW8bit": 0.01,
    "bitsandbytes.optim.PagedAdamW": 0.01, "bitsandbytes.optim.PagedAdamW8bit": 0.01, "timm.optim.AdamW": 0.01,
    "apex.optimizers.FusedAdam": 0.0, "lion_pytorch.Lion": 0.0, "timm.optim.Lion": 0.0,
}  # fmt: skip
#: Positional index of `weight_decay` in AdamW(params, lr, betas, eps, weight_decay).
_WD_INDEX = 4
#: Layers that make a model "transformer-style": normalisation gains and embedding tables.
_NORMS = {"LayerNorm", "RMSNorm", "GroupNorm"}
_EMBEDDINGS = {"Embedding", "EmbeddingBag"}
_ATTENTION = {"MultiheadAttention", "Transformer", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder"}


_TRANSFORMER_WORDS = re.compile(r"LayerNorm|RMSNorm|GroupNorm|Embedding|MultiheadAttention|Transformer|transformers")


class WeightDecayOnNormAndBias(Rule):
    name = "weight-decay-on-norm-and-bias"
    code = "DR805"
    severity = Severity.INFO
    default_enabled = False
    summary = "AdamW-style weight decay is applied to every parameter of a transformer-style model, layer norms, biases and embeddings included."
    why = """
        Decoupled weight decay shrinks each parameter toward zero by `lr * weight_decay` every step. For
        weight matrices that is the intended regulariser; for LayerNorm/RMSNorm gains it pulls the
        normalisation scale toward zero, for biases it removes offsets that cost nothing in capacity, and for
        embedding rows of rare tokens (which get few gradient updates) it erodes them steadily. The recipes
        these models come from (BERT, GPT-2/3, LLaMA, ViT, nanoGPT, Hugging Face's Trainer) exclude them: one
        parameter group with decay for >= 2-D weights, one with `weight_decay=0.0` for norms, biases and
        embeddings. Applying decay to everything trains a little worse and makes results harder to reproduce;
        nothing errors. It is a convention, not a crash, hence off by default.
    """
    known_problems = """
        Off by default (enable with `--select weight-decay-on-norm-and-bias`); reported as info. Looks at
        `torch.optim.AdamW` and the AdamW-style optimizers of transformers, bitsandbytes, timm, apex and
        lion-pytorch built from all of one model's parameters (`model.parameters()`, a `requires_grad` filter of
        them, or a name bound to one) with a weight decay above zero: a literal, a module constant, the
        optimizer's default (0.01 for torch's AdamW), or an expression (then the message says "if above 0"). The
        model must be transformer-style as far as we can read it: a class of this file or a local module (or a
        torch.nn container) that holds LayerNorm/RMSNorm/GroupNorm, Embedding or torch's transformer layers
        (named in this file or a module it imports directly), or a Hugging Face `transformers` model. Parameter
        groups (a list of dicts), parameters from a helper (`get_param_groups(model)`), optimizers from other
        libraries, and `Adam`/`SGD` (see `adam-weight-decay`) are not judged. A model whose norms have no
        learnable parameters, or a study that decays everything on purpose, is reported too.
    """
    bad = """
        import torch
        from torch import nn


        class TinyGPT(nn.Module):
            def __init__(self, vocab=1000, d=128, layers=2):
                super().__init__()
                self.embed = nn.Embedding(vocab, d)
                block = nn.TransformerEncoderLayer(d, nhead=4, batch_first=True, norm_first=True)
                self.blocks = nn.TransformerEncoder(block, layers)
                self.norm = nn.LayerNorm(d)
                self.head = nn.Linear(d, vocab, bias=False)

            def forward(self, ids):
                return self.head(self.norm(self.blocks(self.embed(ids))))


        model = TinyGPT()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        data = torch.randint(0, 1000, (64, 33))

        for step in range(100):
            logits = model(data[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 1000), data[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn


        class TinyGPT(nn.Module):
            def __init__(self, vocab=1000, d=128, layers=2):
                super().__init__()
                self.embed = nn.Embedding(vocab, d)
                block = nn.TransformerEncoderLayer(d, nhead=4, batch_first=True, norm_first=True)
                self.blocks = nn.TransformerEncoder(block, layers)
                self.norm = nn.LayerNorm(d)
                self.head = nn.Linear(d, vocab, bias=False)

            def forward(self, ids):
                return self.head(self.norm(self.blocks(self.embed(ids))))


        model = TinyGPT()
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-4
        )
        data = torch.randint(0, 1000, (64, 33))

        for step in range(100):
            logits = model(data[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 1000), data[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    fires = (
        """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
""",
        """
import torch
from torch import nn
from torch.optim import AdamW
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(30000, 256)
        self.ln = nn.LayerNorm(256)
class Trainer:
    def __init__(self, cfg):
        self.model = Encoder()
        params = filter(lambda p: p.requires_grad, self.model.parameters())
        self.optimizer = AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
""",
    )
    silent = (
        """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
no_decay = ["bias", "LayerNorm.weight"]
groups = [
    {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
    {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
]
optimizer = torch.optim.AdamW(groups, lr=5e-5)
""",
        """
import torch
from torch import nn
model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
""",
        """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
""",
        """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
optimizer = torch.optim.AdamW(get_parameter_groups(model, weight_decay=0.1), lr=5e-5)
""",
    )

    def check(self, ctx):
        if not re.search(r"AdamW|Adam\b|Lion|FusedAdam", ctx.source.text):
            return
        m = ctx.model
        if not source_mentions(m, _TRANSFORMER_WORDS, ctx.source.text):
            return
        layers: Optional[Layers] = None
        for call in m.nodes(ast.Call):
            q = m.imports.qualify(call.func) or ""
            default = _decay_default(q, call)
            if default is False:
                continue
            params = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "params"), None)
            owner = _all_parameters_of(m, params)
            if owner is None:
                continue
            wd_node = next((kw.value for kw in call.keywords if kw.arg == "weight_decay"), None)
            if wd_node is None and len(call.args) > _WD_INDEX:
                wd_node = call.args[_WD_INDEX]
            if wd_node is None:
                if not default:
                    continue
                decay = f"the default weight_decay={default:g}"
            else:
                value = literal_number(m, wd_node)
                if value is not None and value <= 0:
                    continue
                decay = f"weight_decay={ctx.segment(wd_node)}" + ("" if value is not None else " (if above 0)")
            if layers is None:
                layers = Layers(m)
            found = layers.of_object(owner)
            if not found:
                continue
            names = {l.name for l in found}
            kinds = sorted(names & (_NORMS | _EMBEDDINGS | _ATTENTION))
            if not kinds:
                continue
            built = built_by(m, owner)
            what = f"`{ast.unparse(owner)}`"
            if built is not None:
                cname = built.qualified.rsplit(".", 1)[-1] or ast.unparse(built.call.func)
                if cname in ("from_pretrained", "from_config"):
                    cname = ast.unparse(built.call.func)
                line = built.call.lineno
                where = f"line {line}" if built.program is m else f"{os.path.basename(built.program.path or '')}:{line}"
                what += f" (the `{cname}` built on {where})"
            held = ", ".join(k for k in kinds if k in _NORMS | _EMBEDDINGS) or "transformer layers with layer norms"
            yield self.finding(
                ctx,
                call,
                f"`{ctx.segment(call.func)}` applies {decay} to every parameter of {what}, which holds {held}: "
                "norm gains, biases and embeddings are decayed toward zero too; put them in a parameter group with "
                "`weight_decay=0.0`",
            )


def _decay_default(q: str, call: ast.Call):
    """The optimizer's default weight decay when it decouples decay; False when it does not decouple."""
    if q in _DECOUPLED:
        return _DECOUPLED[q]
    last = q.rsplit(".", 1)[-1]
    if q.startswith("torch.optim") and last == "Adam":
        for kw in call.keywords:
            if kw.arg == "decoupled_weight_decay" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                return 0.0
        return False
    if last == "AdamW" and q.split(".")[0] in ("torch", "transformers", "bitsandbytes", "bnb", "timm", "optim"):
        return 0.01 if not q.startswith("transformers") else 0.0
    return False


def _all_parameters_of(m, params: Optional[ast.AST], depth: int = 0) -> Optional[ast.AST]:
    """The module whose parameters ``params`` holds, all of them: ``model.parameters()``, a requires_grad
    filter of them, ``list(...)`` of them, or a name bound to one of those. None for groups and anything else."""
    if params is None or depth > 4:
        return None
    if isinstance(params, ast.Name):
        value = m.values.value_of(params)
        return _all_parameters_of(m, value, depth + 1) if value is not None else None
    if isinstance(params, ast.Call):
        func = params.func
        if isinstance(func, ast.Attribute) and func.attr == "parameters" and not params.args and not params.keywords:
            return func.value
        if isinstance(func, ast.Name) and func.id in ("list", "tuple") and len(params.args) == 1:
            return _all_parameters_of(m, params.args[0], depth + 1)
        if isinstance(func, ast.Name) and func.id == "filter" and len(params.args) == 2 and _only_requires_grad(params.args[0]):
            return _all_parameters_of(m, params.args[1], depth + 1)
        return None
    if isinstance(params, (ast.ListComp, ast.GeneratorExp)) and len(params.generators) == 1:
        gen = params.generators[0]
        if isinstance(params.elt, ast.Name) and isinstance(gen.target, ast.Name) and params.elt.id == gen.target.id and all(_only_requires_grad(c) for c in gen.ifs):
            return _all_parameters_of(m, gen.iter, depth + 1)
    return None


def _only_requires_grad(expr: ast.AST) -> bool:
    """A filter that keeps trainable parameters and looks at nothing else (`p.requires_grad`, `lambda p: ...`)."""
    if isinstance(expr, ast.Lambda):
        expr = expr.body
    attrs = {n.attr for n in ast.walk(expr) if isinstance(n, ast.Attribute)}
    calls = [n for n in ast.walk(expr) if isinstance(n, ast.Call)]
    return attrs == {"requires_grad"} and not calls
