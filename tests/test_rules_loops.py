"""Targeted tests for the evaluation / data loading / AMP step-order / checkpoint rules and the analysis they
stand on (doctor.analysis.modes, doctor.analysis.data): fixes, report locations, and how loaders, eval
functions and no_grad regions are recognised."""

import ast
import textwrap

import pytest

from doctor.analysis.model import TrainingModel
from doctor.lint.config import Settings
from doctor.lint.fixer import fix_file
from doctor.lint.registry import lookup, select_rules, static_rules
from doctor.lint.testing import check_snippet

OWN = [
    "double-optimizer-step", "clip-after-step", "clip-before-unscale", "eval-without-no-grad", "missing-eval-mode",
    "train-mode-not-restored", "train-loader-not-shuffled", "sampler-missing-set-epoch",
    "resume-without-scheduler-state", "missing-seed",
]


def found(code, rule):
    return [f for f in check_snippet(code, [static_rules()[rule]]) if f.rule == rule]


def fixed_text(tmp_path, code, rule):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(code))
    done = fix_file(str(path), [static_rules()[rule]], Settings(), unsafe=True)
    assert done.applied >= 1, done.messages
    return done.fixed.decode()


def test_codes_and_defaults():
    codes = {name: static_rules()[name].code for name in OWN}
    assert codes == {
        "double-optimizer-step": "DR104", "clip-after-step": "DR105", "clip-before-unscale": "DR106",
        "eval-without-no-grad": "DR601", "missing-eval-mode": "DR602", "train-mode-not-restored": "DR603",
        "train-loader-not-shuffled": "DR701", "sampler-missing-set-epoch": "DR702",
        "resume-without-scheduler-state": "DR901", "missing-seed": "DR902",
    }
    default = {r.name for r in select_rules()}
    assert "missing-seed" not in default
    assert set(OWN) - {"missing-seed"} <= default
    assert lookup("DR106") is static_rules()["clip-before-unscale"]


# -- fixes ----------------------------------------------------------------------------------------------
CLIP_BEFORE_UNSCALE = """
import torch
scaler = torch.cuda.amp.GradScaler()
def train(model, loader, opt):
    for x, y in loader:
        opt.zero_grad()
        with torch.autocast("cuda"):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
"""


def test_clip_before_unscale_fix_inserts_unscale(tmp_path):
    text = fixed_text(tmp_path, CLIP_BEFORE_UNSCALE, "clip-before-unscale")
    lines = [l.strip() for l in text.splitlines()]
    i = lines.index("scaler.unscale_(opt)")
    assert lines[i - 1] == "scaler.scale(loss).backward()"
    assert lines[i + 1].startswith("torch.nn.utils.clip_grad_norm_")
    assert not found(text, "clip-before-unscale")


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("sampler = DistributedSampler(ds)\n    loader = DataLoader(ds, sampler=sampler)", "sampler.set_epoch(epoch)"),
        ("loader = DataLoader(ds, sampler=DistributedSampler(ds))", "loader.sampler.set_epoch(epoch)"),
        (
            "loader = DataLoader(ds, batch_sampler=BatchSampler(DistributedSampler(ds), 8, False))",
            "loader.batch_sampler.sampler.set_epoch(epoch)",
        ),
    ],
)
def test_set_epoch_fix_reaches_the_sampler(tmp_path, setup, expected):
    code = f"""
import torch
from torch.utils.data import DataLoader, DistributedSampler, BatchSampler
def main(ds, model, optimizer):
    {setup}
    for epoch in range(10):
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
"""
    text = fixed_text(tmp_path, code, "sampler-missing-set-epoch")
    lines = [l.strip() for l in text.splitlines()]
    assert lines[lines.index("for epoch in range(10):") + 1] == expected
    assert not found(text, "sampler-missing-set-epoch")


def test_set_epoch_fix_not_offered_when_sampler_name_is_out_of_scope():
    code = """
import torch
from torch.utils.data import DataLoader, DistributedSampler
def build(ds):
    sampler = DistributedSampler(ds)
    return sampler
def main(ds):
    loader = DataLoader(ds, sampler=build(ds))
    for epoch in range(3):
        for batch in loader:
            step(batch)
"""
    # The sampler is not visible through the loader's construction either: nothing is reported.
    assert not found(code, "sampler-missing-set-epoch")
    code2 = """
import torch
from torch.utils.data import DataLoader, DistributedSampler
def make_loader(ds):
    sampler = DistributedSampler(ds)
    return DataLoader(ds, sampler=sampler)
def main(ds):
    loader = make_loader(ds)
    for epoch in range(3):
        for batch in loader:
            step(batch)
"""
    # The loader is followed through make_loader's return value: reported, but `sampler` is not a name that
    # exists at the top of main's epoch loop, so no fix is offered.
    [f] = found(code2, "sampler-missing-set-epoch")
    assert f.line == 5 and f.fix is None


# -- report locations -----------------------------------------------------------------------------------
def test_each_problem_is_reported_once_even_when_main_is_inlined():
    code = """
import torch
def evaluate(model, loader):
    model.eval()
    return [model(x) for x, _ in loader]
def main():
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        if step % 100 == 0:
            evaluate(model, val_loader)
        optimizer.step()
main()
"""
    findings = check_snippet(code, [static_rules()["train-mode-not-restored"], static_rules()["double-optimizer-step"]])
    lines = sorted((f.rule, f.line) for f in findings)
    assert lines == [("double-optimizer-step", 14), ("train-mode-not-restored", 13)]


# -- evaluation -----------------------------------------------------------------------------------------
def test_project_wrapper_of_inference_mode_counts_as_no_grad():
    code = """
import torch
from utils import smart_inference_mode
@smart_inference_mode()
def validate(model, loader):
    model.eval()
    for x, y in loader:
        model(x)
"""
    assert not found(code, "eval-without-no-grad")


def test_helpers_named_like_models_are_not_forward_passes():
    code = """
import torch
def validate(trainer, loader):
    model = unwrap_model(trainer.get_model())
    model.eval()
    for batch in loader:
        trainer.valid_step(batch)
"""
    assert not found(code, "eval-without-no-grad")


def test_pytest_test_functions_are_not_evaluation_loops():
    code = """
import pytest
import torch
def test_model(model, batches):
    model.eval()
    for x in batches:
        assert model(x).shape == (2, 3)
"""
    assert not found(code, "eval-without-no-grad")


def test_a_module_forward_that_calls_teacher_eval_is_not_an_evaluation():
    code = """
import torch
from torch import nn
class Distill(nn.Module):
    def forward(self, x):
        self.teacher.eval()
        for block in self.blocks:
            x = self.model(x)
        return x
"""
    assert not found(code, "eval-without-no-grad")


def test_missing_eval_mode_knows_which_models_depend_on_the_mode():
    template = """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = {layer}
model = Net()
@torch.no_grad()
def evaluate(model, loader):
    for x, y in loader:
        model(x)
"""
    assert found(template.format(layer="nn.BatchNorm2d(3)"), "missing-eval-mode")
    assert found(template.format(layer="nn.Dropout(p=0.1)"), "missing-eval-mode")
    assert not found(template.format(layer="nn.LayerNorm(3)"), "missing-eval-mode")


# -- data -----------------------------------------------------------------------------------------------
def test_loader_is_followed_through_accelerate_prepare():
    code = """
import torch
from torch.utils.data import DataLoader
from accelerate import Accelerator
accelerator = Accelerator()
train_dl = DataLoader(train_ds, batch_size=8)
model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
for epoch in range(3):
    for batch in train_dl:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
"""
    [f] = found(code, "train-loader-not-shuffled")
    assert f.line == 6


def test_loaders_resolution_is_all_or_nothing():
    tree = ast.parse(textwrap.dedent("""
        from torch.utils.data import DataLoader
        def train(loader):
            for b in loader:
                pass
        train(DataLoader(a))
        train(get_loader())
    """))
    m = TrainingModel(tree)
    fn = m.functions["train"]
    loop = next(n for n in ast.walk(fn) if isinstance(n, ast.For))
    assert m.data.loaders(loop.iter, fn) is None  # one caller passes something we cannot see


def test_shuffled_hf_dataset_and_time_series_stay_silent():
    base = """
import torch
from torch.utils.data import DataLoader
{setup}
loader = DataLoader(ds, batch_size=8)
for epoch in range(3):
    for batch in loader:
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
"""
    assert not found(base.format(setup="ds = load_dataset('imdb', split='train').shuffle(seed=0)"), "train-loader-not-shuffled")
    assert not found(base.format(setup="ds = TimeSeriesWindows(values, 64)"), "train-loader-not-shuffled")
    assert found(base.format(setup="ds = ImageFolder(root)"), "train-loader-not-shuffled")


# -- checkpoints and seeds ------------------------------------------------------------------------------
def test_resume_ignores_wrappers_delegating_load_state_dict():
    code = """
import torch
class Wrapped:
    def __init__(self, opt):
        self.optimizer = opt
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(opt, 10)
    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)
"""
    assert not found(code, "resume-without-scheduler-state")


def test_missing_seed_reports_the_main_guard():
    code = """
import torch
def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
if __name__ == "__main__":
    train(model, loader, optimizer)
"""
    [f] = found(code, "missing-seed")
    assert f.line == 8
    assert not found(code.replace("    train(model", "    torch.cuda.manual_seed_all(0)\n    train(model"), "missing-seed")


@pytest.mark.parametrize("name", OWN)
def test_explain_has_docs(name):
    rule = static_rules()[name]
    assert rule.why.strip() and rule.bad.strip() and rule.good.strip()
    assert rule.fires and rule.silent


def test_loaders_are_followed_through_same_file_builders():
    code = """
import torch
from torch.utils.data import DataLoader
def build_loaders(cfg):
    train_loader = DataLoader(train_set, batch_size=cfg.bs{shuffle})
    val_loader = DataLoader(val_set, batch_size=cfg.bs)
    return train_loader, val_loader
def main(cfg):
    train_loader, val_loader = build_loaders(cfg)
    for epoch in range(3):
        for x, y in train_loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
"""
    [f] = found(code.format(shuffle=""), "train-loader-not-shuffled")
    assert f.line == 5  # the training loader, not the validation one
    assert not found(code.format(shuffle=", shuffle=True"), "train-loader-not-shuffled")


def test_a_single_pass_over_an_unshuffled_loader_is_not_reported():
    code = """
import torch
from torch.utils.data import DataLoader
dl = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
for {loop}:
    optimizer.zero_grad()
    criterion(model(xb), yb).backward()
    optimizer.step()
"""
    assert not found(code.format(loop="step, (xb, yb) in enumerate(dl)"), "train-loader-not-shuffled")
    epochs = code.replace("for {loop}:", "for epoch in range(2):\n  for xb, yb in dl:").replace("\n    ", "\n      ")
    assert found(epochs, "train-loader-not-shuffled")


def test_set_epoch_fix_is_guarded_when_the_sampler_is_conditional(tmp_path):
    code = """
import torch
from torch.utils.data import DataLoader, DistributedSampler
def main(ds, model, optimizer, distributed):
    sampler = DistributedSampler(ds) if distributed else None
    loader = DataLoader(ds, sampler=sampler, shuffle=sampler is None)
    for epoch in range(10):
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
"""
    text = fixed_text(tmp_path, code, "sampler-missing-set-epoch")
    assert 'if hasattr(sampler, "set_epoch"): sampler.set_epoch(epoch)' in text
    assert not found(text, "sampler-missing-set-epoch")
