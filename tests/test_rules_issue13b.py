"""Targeted tests for rules 7-12 of issue 13 and the analysis they stand on (doctor.analysis.layers,
doctor.analysis.datasets): codes and defaults, sizes and layers read across functions and files, severities,
report locations and the fixes."""

import ast
import textwrap

from doctor.analysis.datasets import dataset_length, loaders_reaching
from doctor.analysis.layers import Layers, built_by
from doctor.analysis.model import TrainingModel
from doctor.core.findings import Severity
from doctor.lint.config import Settings
from doctor.lint.fixer import fix_file
from doctor.lint.registry import select_rules, static_rules
from doctor.lint.testing import check_snippet

OWN = {
    "double-label-shift": ("DR406", Severity.ERROR, True),
    "dataloader-worker-shared-rng": ("DR703", Severity.WARNING, True),
    "batchnorm-last-batch-of-one": ("DR704", Severity.ERROR, True),
    "weight-decay-on-norm-and-bias": ("DR805", Severity.INFO, False),
    "accum-remainder-discarded": ("DR205", Severity.WARNING, True),
    "clip-every-micro-step": ("DR206", Severity.ERROR, True),
}


def found(code, rule):
    return [f for f in check_snippet(code, [static_rules()[rule]]) if f.rule == rule]


def model_of(tmp_path, files: dict[str, str], main: str) -> TrainingModel:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    path = str(tmp_path / main)
    return TrainingModel(ast.parse((tmp_path / main).read_text()), path=path)


def name_at(m, ident, line=None):
    return [n for n in m.nodes(ast.Name) if n.id == ident and isinstance(n.ctx, ast.Load) and (line is None or n.lineno == line)][-1]


def test_codes_severities_and_defaults():
    rules = static_rules()
    for name, (code, severity, default) in OWN.items():
        assert (rules[name].code, rules[name].severity, rules[name].default_enabled) == (code, severity, default)


# -- analysis: dataset sizes ----------------------------------------------------------------------------------
def test_dataset_length_forms(tmp_path):
    m = model_of(tmp_path, {"t.py": """
        import torch
        import torchvision
        from torch.utils.data import TensorDataset, random_split, Subset
        a = TensorDataset(torch.randn(1025, 3), torch.zeros(1025))
        b, c = random_split(a, [1000, 25])
        d = [(1, 2)] * 64
        e = [i for i in range(10)]
        f = Subset(a, range(300))
        g = torchvision.datasets.SVHN("x", split="test")
        h = torchvision.datasets.CIFAR10("x", train=False)
        i = TensorDataset(torch.randn(n, 3))
        def fit(rows):
            return rows
        fit(torch.randn(77, 2))
        use = (a, b, c, d, e, f, g, h, i)
    """}, "t.py")
    sizes = {k: dataset_length(m, name_at(m, k)) for k in "abcdefghi"}
    assert sizes == {"a": 1025, "b": 1000, "c": 25, "d": 64, "e": 10, "f": 300, "g": 26032, "h": 10000, "i": None}
    fn = m.functions["fit"]
    rows = [n for n in m.index.within(fn, ast.Name) if n.id == "rows"][0]
    from doctor.analysis.datasets import tensor_rows

    assert tensor_rows(m, rows) == 77  # through the only caller


def test_loaders_reaching_ignores_same_named_loader_of_another_function(tmp_path):
    m = model_of(tmp_path, {"t.py": """
        from torch.utils.data import DataLoader
        def train(ds):
            loader = DataLoader(ds, batch_size=8)
            for x in loader:
                pass
        def evaluate(ds):
            loader = DataLoader(ds, batch_size=64)
            for x in loader:
                pass
    """}, "t.py")
    loop = [n for n in m.nodes(ast.For)][0]
    calls = loaders_reaching(m, loop.iter)
    assert [c.node.lineno for c in calls] == [4]
    assert len(m.data.loaders(loop.iter, m.functions["train"])) == 2  # the flow-insensitive answer it refines


# -- analysis: layers ------------------------------------------------------------------------------------------
def test_layers_across_files_builders_and_bases(tmp_path):
    m = model_of(tmp_path, {
        "nets.py": """
            from torch import nn
            def conv_bn(c):
                return nn.Sequential(nn.Conv2d(c, c, 3), nn.BatchNorm2d(c))
            class Base(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.emb = nn.Embedding(10, 4)
            class Net(Base):
                def __init__(self):
                    super().__init__()
                    self.stem = conv_bn(3)
                    self.norm = nn.LayerNorm(4)
        """,
        "train.py": """
            import torch
            from nets import Net
            net = Net().cuda()
            model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[0])
            out = model
        """,
    }, "train.py")
    expr = name_at(m, "model")
    assert built_by(m, expr).qualified == "nets.Net"
    names = {l.name for l in Layers(m).of_object(expr)}
    assert {"Conv2d", "BatchNorm2d", "Embedding", "LayerNorm", "Sequential"} <= names
    assert "Module" not in names  # base classes are not layers


def test_layers_unknown_is_none(tmp_path):
    m = model_of(tmp_path, {"t.py": """
        import timm
        model = timm.create_model("resnet50")
        out = model
    """}, "t.py")
    assert Layers(m).of_object(name_at(m, "model")) is None


# -- rules: severities and messages ---------------------------------------------------------------------------
BN_KNOWN = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
model = nn.Sequential(nn.Linear(8, 16), nn.{norm}(16), nn.ReLU(), nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.randn({n}, 8), torch.zeros({n}).long()), batch_size=32, shuffle=True)
for epoch in range(3):
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
"""


def test_batchnorm_severity_by_layer_and_size():
    one = found(BN_KNOWN.format(norm="BatchNorm1d", n=65), "batchnorm-last-batch-of-one")
    assert [f.severity for f in one] == [Severity.ERROR] and "65 samples in batches of 32" in one[0].message
    assert not found(BN_KNOWN.format(norm="BatchNorm1d", n=64), "batchnorm-last-batch-of-one")
    assert not found(BN_KNOWN.format(norm="BatchNorm1d", n=66), "batchnorm-last-batch-of-one")
    assert not found(BN_KNOWN.format(norm="LayerNorm", n=65), "batchnorm-last-batch-of-one")


def test_batchnorm_unknown_size_is_a_warning_that_says_so():
    code = BN_KNOWN.format(norm="BatchNorm1d", n=65).replace(
        "TensorDataset(torch.randn(65, 8), torch.zeros(65).long())", "train_set"
    )
    got = found(code, "batchnorm-last-batch-of-one")
    assert [f.severity for f in got] == [Severity.WARNING]
    assert "cannot be known from the code" in got[0].message


def test_batchnorm_fix_adds_drop_last(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(BN_KNOWN.format(norm="BatchNorm1d", n=65))
    done = fix_file(str(path), [static_rules()["batchnorm-last-batch-of-one"]], Settings(), unsafe=True)
    assert done.applied == 1
    assert "batch_size=32, shuffle=True, drop_last=True)" in done.fixed.decode()


def test_worker_rng_reports_at_the_loader_with_the_dataset_file(tmp_path):
    (tmp_path / "data.py").write_text(textwrap.dedent("""
        import numpy as np
        from torch.utils.data import Dataset
        class Noisy(Dataset):
            def __init__(self, xs):
                self.xs = xs
                self.rng = np.random.default_rng(0)
            def __len__(self):
                return len(self.xs)
            def __getitem__(self, i):
                return self.xs[i] + self.rng.normal()
    """))
    code = textwrap.dedent("""
        from torch.utils.data import DataLoader
        from data import Noisy
        def make(xs, workers=4):
            return DataLoader(Noisy(xs), batch_size=8, num_workers=workers)
        make([1.0] * 10)
        make([2.0] * 10, workers=0)
    """)
    path = tmp_path / "train.py"
    path.write_text(code)
    got = [f for f in check_snippet(code, [static_rules()["dataloader-worker-shared-rng"]], path=str(path))]
    # The two callers disagree (4 and 0 workers): the count is unknown, so the message hedges.
    assert [f.line for f in got] == [5]
    assert "data.py:7" in got[0].message and "whenever it is above 0" in got[0].message


def test_accum_remainder_fix_adds_last_batch_flush(tmp_path):
    rule = static_rules()["accum-remainder-discarded"]
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(rule.bad))
    done = fix_file(str(path), [rule], Settings(), unsafe=True)
    assert done.applied == 1
    assert "if (i + 1) % accum_steps == 0 or i + 1 == len(loader):" in done.fixed.decode()


def test_accum_remainder_no_fix_for_a_streaming_loader():
    code = """
import torch
from torch.utils.data import DataLoader, IterableDataset
class Stream(IterableDataset):
    def __iter__(self):
        yield from range(10)
loader = DataLoader(Stream(), batch_size=4)
for epoch in range(3):
    optimizer.zero_grad()
    for i, x in enumerate(loader):
        (model(x).loss / 4).backward()
        if (i + 1) % 4 == 0:
            optimizer.step()
            optimizer.zero_grad()
"""
    got = found(code, "accum-remainder-discarded")
    assert len(got) == 1 and got[0].fix is None  # len(loader) would raise on a dataset without a length


def test_clip_every_micro_step_one_fix_moves_both_statements(tmp_path):
    rule = static_rules()["clip-every-micro-step"]
    got = found(rule.bad, rule.name)
    assert len(got) == 2 and sum(f.fix is not None for f in got) == 1
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(rule.bad))
    done = fix_file(str(path), [rule], Settings(), unsafe=True)
    assert done.fixed.decode() == textwrap.dedent(rule.fixed)


def test_double_label_shift_needs_the_pair_not_just_a_slice():
    base = """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2")
for batch in loader:
    ids = batch["input_ids"]
    out = model(input_ids={inputs}, labels=ids[:, 1:])
    out.loss.backward()
"""
    assert found(base.format(inputs="ids[:, :-1]"), "double-label-shift")
    assert not found(base.format(inputs="other[:, :-1]"), "double-label-shift")
    assert not found(base.format(inputs="ids[:, 1:]"), "double-label-shift")


def test_weight_decay_is_off_by_default():
    defaults = {r.name for r in select_rules()}
    assert "weight-decay-on-norm-and-bias" not in defaults
    assert {"double-label-shift", "clip-every-micro-step", "accum-remainder-discarded"} <= defaults
