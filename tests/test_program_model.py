"""The whole-program model: local modules, call sites across files, parameters, iteration functions, and the
result cache's dependency on the other files a finding rests on."""

import ast
import os
import textwrap

import pytest

from doctor.analysis.model import TrainingModel
from doctor.analysis.project import Project, project_root
from doctor.lint.cache import open_cache
from doctor.lint.config import Settings
from doctor.lint.engine import check_files
from doctor.lint.registry import select_rules


def write(root, rel, text):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(textwrap.dedent(text).lstrip("\n"))
    return path


def model_of(path):
    with open(path, encoding="utf-8") as fh:
        return TrainingModel(ast.parse(fh.read()), path)


@pytest.fixture(autouse=True)
def fresh_projects():
    Project.forget()
    yield
    Project.forget()


def test_project_root_is_above_the_top_package(tmp_path):
    write(tmp_path, "repo/pkg/__init__.py", "")
    path = write(tmp_path, "repo/pkg/models/__init__.py", "")
    assert project_root(path) == os.path.join(str(tmp_path), "repo")
    script = write(tmp_path, "repo/tools/train.py", "x = 1\n")
    assert project_root(script) == os.path.join(str(tmp_path), "repo", "tools")


def test_names_resolve_through_relative_imports_and_package_reexports(tmp_path):
    write(tmp_path, "proj/pkg/__init__.py", "from .nets import Net\n")
    write(tmp_path, "proj/pkg/nets.py", """
        import torch.nn as nn
        class Base(nn.Module):
            pass
        class Net(Base):
            def forward(self, x):
                return x
    """)
    main = write(tmp_path, "proj/train.py", "from pkg import Net\nmodel = Net()\n")
    m = model_of(main)
    found = m.resolve_class(ast.parse("Net").body[0].value)
    assert found is not None and found[1].name == "Net"
    assert found[0].class_kind(found[1]) == "model"  # nn.Module through a base class of that module
    assert m.objects.kind("model") == "model"  # the object is built by that class: verified on demand


def test_call_sites_and_argument_values_across_files(tmp_path):
    engine = write(tmp_path, "p/engine.py", """
        def train_epoch(model, loader, optimizer, criterion):
            for x, y in loader:
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                optimizer.step()
    """)
    write(tmp_path, "p/main.py", """
        import torch
        from engine import train_epoch
        from model import Net
        model = Net()
        train_epoch(model, [], torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss())
    """)
    write(tmp_path, "p/model.py", "import torch.nn as nn\nclass Net(nn.Module):\n    pass\n")
    m = model_of(engine)
    fn = m.functions["train_epoch"]
    sites = m.call_sites(fn)
    assert [os.path.basename(p.path) for p, _ in sites] == ["main.py"]
    values = dict((param, m.argument_values(fn, param)) for param in ("model", "criterion"))
    assert ast.unparse(values["model"][0][1]) == "model"
    info = m.info("criterion", at=fn.body[0])
    assert info is not None and info.ctor.endswith("CrossEntropyLoss")


def test_a_binding_in_one_function_does_not_leak_into_another_functions_parameter(tmp_path):
    path = write(tmp_path, "s/train.py", """
        import torch
        from schedulers import CycleScheduler
        def pretrain(opt):
            scheduler = CycleScheduler(opt, 3e-4, n_iter=10)
            scheduler.step()
        def finetune(opt, scheduler):
            scheduler.step()
    """)
    m = model_of(path)
    use = m.functions["finetune"].body[0].value
    assert m.info("scheduler", at=use) is None  # a parameter nobody passes: unknown, not pretrain's CycleScheduler
    assert m.info("scheduler", at=m.functions["pretrain"].body[1].value).ctor.endswith("CycleScheduler")


def test_a_method_called_in_a_loop_of_another_file_runs_per_iteration(tmp_path):
    write(tmp_path, "r/lib/__init__.py", "")
    write(tmp_path, "r/lib/models/__init__.py", "def build_model(opt):\n    return None\n")
    sr = write(tmp_path, "r/lib/models/sr.py", """
        import torch
        class SR:
            def optimize_parameters(self, it):
                self.loss.backward()
                self.optimizer.step()
    """)
    write(tmp_path, "r/lib/train.py", """
        from lib.models import build_model
        def main(opt, loader):
            model = build_model(opt)
            for it, batch in enumerate(loader):
                model.optimize_parameters(it)
    """)
    m = model_of(sr)
    fn = m.methods["SR"]["optimize_parameters"]
    why = m.runs_per_iteration(fn)
    assert why is not None and "train.py" in why


def test_a_caller_loop_that_clears_is_not_reported(tmp_path):
    write(tmp_path, "c/lib/__init__.py", "")
    sr = write(tmp_path, "c/lib/sr.py", """
        class SR:
            def optimize_parameters(self):
                self.loss.backward()
                self.optimizer.step()
    """)
    write(tmp_path, "c/lib/train.py", """
        def main(model, loader):
            for batch in loader:
                model.optimizer.zero_grad()
                model.optimize_parameters()
    """)
    m = model_of(sr)
    assert m.runs_per_iteration(m.methods["SR"]["optimize_parameters"]) is None


def test_a_broken_local_module_costs_nothing_but_its_own_facts(tmp_path):
    write(tmp_path, "b/model.py", "class Net(:\n")
    path = write(tmp_path, "b/train.py", """
        import torch
        from model import Net
        def fit(net, loader):
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            for x, y in loader:
                torch.nn.functional.mse_loss(net(x), y).backward()
                opt.step()
    """)
    result = check_files([path], Settings(root=str(tmp_path)), select_rules(["ALL"], [], []))
    assert result.files[0].error is None
    assert [f.rule for f in result.findings] == ["missing-zero-grad"]


def test_the_cache_rechecks_a_file_when_a_module_it_read_changes(tmp_path):
    write(tmp_path, "k/model.py", """
        import torch.nn as nn
        class TextClassifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 4)
            def forward(self, x):
                return self.fc(x)
    """)
    train = write(tmp_path, "k/train.py", """
        import torch
        from model import TextClassifier
        def main(loader):
            model = TextClassifier()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    """)
    settings = Settings(root=str(tmp_path))
    rules = select_rules([], [], [])
    cache_dir = str(tmp_path / "cache")

    def run():
        cache = open_cache(cache_dir, settings, rules)
        return check_files([train], settings, rules, cache=cache)

    first = run()
    assert first.findings == [] and not first.files[0].cached
    assert run().files[0].cached  # nothing changed: answered from the cache
    # The model file (not the checked one) now ends in a softmax: train.py must be checked again.
    write(tmp_path, "k/model.py", """
        import torch
        import torch.nn as nn
        class TextClassifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 4)
            def forward(self, x):
                return torch.softmax(self.fc(x), dim=1)
    """)
    os.utime(os.path.join(str(tmp_path), "k", "model.py"), ns=(1, 1))  # a different mtime even on coarse clocks
    again = run()
    assert not again.files[0].cached
    assert [f.rule for f in again.findings] == ["softmax-before-cross-entropy"]
    assert "model.py" in again.findings[0].message


def test_reverse_lookups_by_search_and_by_index_agree(tmp_path, monkeypatch):
    """A big project is indexed once the name-by-name searches have read it often enough: both ways find the
    same callers (whole words followed by `(`, in file order, at most MAX_CALLER_FILES + 1)."""
    from doctor.analysis import project as P
    from doctor.analysis.program import Program

    write(tmp_path, "a.py", "def fit(model):\n    step(model)\n\nclass T:\n    def run(self):\n        self.fit (1)\n")
    write(tmp_path, "b.py", "from a import fit\nrefit(1)\nfit_all = 1\nx.fit(\n  2)\n# fit( in a comment\n")
    write(tmp_path, "c.py", "prefit(2)\nstep (3)\n")
    for i in range(12):
        write(tmp_path, f"many_{i:02d}.py", "common()\n")
    names = ["fit", "step", "refit", "prefit", "fit_all", "common", "run", "absent"]

    def lookups():
        project = Project(str(tmp_path), Program)
        project.files()
        project._load()
        return {n: [os.path.basename(p) for p in project._files_calling(n)] for n in names}, project

    searched, project = lookups()
    assert project._called is None  # a few names: searched, never indexed
    assert searched["fit"] == ["a.py", "b.py"] and searched["step"] == ["a.py", "c.py"]
    assert searched["fit_all"] == [] and searched["absent"] == []
    assert len(searched["common"]) == P.MAX_CALLER_FILES + 1
    monkeypatch.setattr(P, "INDEX_AFTER", 0)
    indexed, project = lookups()
    assert project._called is not None and indexed == searched


def test_reverse_lookups_skip_the_asking_file_and_keep_no_programs(tmp_path):
    from doctor.analysis.program import Program

    write(tmp_path, "a.py", "def fit(model):\n    pass\n\nfit(1)\n")
    write(tmp_path, "b.py", "from a import fit\nfit(2)\n")
    project = Project(str(tmp_path), Program)
    sites = project.calls_named("fit", skip=str(tmp_path / "a.py"))
    assert [os.path.basename(s.program.path) for s in sites] == ["b.py"]
    assert str(tmp_path / "a.py") not in project._programs  # the asking file was not parsed again
    assert all(isinstance(p, str) for p in project._callers["fit"])  # paths cached, programs stay bounded
    assert [os.path.basename(s.program.path) for s in project.calls_named("fit")] == ["a.py", "b.py"]
