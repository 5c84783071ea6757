"""Minimal reproductions of the false-alarm classes and missed-mutant shapes found on the real-world corpus.

    python benchmarks/realworld/shapes.py

Each snippet is written to a temporary folder (they are kept as strings so that `doctor check` of this repository
never sees them) and checked with only its rule selected. ``want`` says what a correct doctor does: ``silent`` for a
false-alarm class, ``report`` for a missed shape. The last column says whether today's doctor does it; the real
sites each snippet was cut from are named in REALWORLD.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

# name, rule code, want ('silent' | 'report'), file name, source
SHAPES: list[tuple[str, str, str, str, str]] = []


def shape(name: str, code: str, want: str, src: str, fname: str = "") -> None:
    SHAPES.append((name, code, want, fname or f"{name}.py", textwrap.dedent(src).lstrip("\n")))


def notebook(cells: list[str]) -> str:
    return json.dumps({
        "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": c.splitlines(True)} for c in cells],  # not dedented: indentation is the point
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    })


# ------------------------------------------------------------------------------------------ false-alarm classes

shape("fa_ipython_shell_continuation", "DR000", "silent", notebook([
    "import torch\n",
    "%cd /content/yolov7/\n!python export.py --weights ./yolov7-tiny.pt \\\n        --grid --end2end \\\n        --img-size 640 640\n",
]), "fa_ipython_shell_continuation.ipynb")

shape("fa_ipython_leading_indent", "DR000", "silent", notebook([
    "import torch\n",
    " # Make sure we have a GPU\n device = 'cuda' if torch.cuda.is_available() else 'cpu'\n device\n",
]), "fa_ipython_leading_indent.ipynb")

shape("fa_requires_grad_off", "DR601", "silent", """
    import torch

    def compute_metric(G, loader, device):
        sampler = Sampler(G)
        sampler.eval().requires_grad_(False).to(device)
        out = []
        for c in loader:
            out.append(sampler(c))
        return out

    class Sampler(torch.nn.Module):
        def __init__(self, G):
            super().__init__()
            self.G = G
        def forward(self, c):
            return self.G(c)
""")

shape("fa_objects_by_name_betas", "DR901", "silent", """
    import torch

    def linear_beta_schedule(timesteps):
        return torch.linspace(1e-4, 0.02, timesteps)

    class Trainer:
        def __init__(self, model):
            self.model = model
            self.betas = linear_beta_schedule(1000)
            self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        def save(self, path):
            torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict()}, path)
        def load(self, path):
            data = torch.load(path)
            self.model.load_state_dict(data["model"])
            self.opt.load_state_dict(data["opt"])
""")

shape("fa_objects_by_name_schedule_sampler", "DR901", "silent", """
    import torch

    def main(args, model, diffusion):
        schedule_sampler = create_named_schedule_sampler("uniform", diffusion)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        if args.resume_checkpoint:
            opt.load_state_dict(torch.load(args.opt_checkpoint))
        for step in range(args.iterations):
            t, weights = schedule_sampler.sample(args.batch_size, "cuda")
            loss = (diffusion.training_losses(model, t) * weights).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
""")

shape("fa_scheduler_state_through_loop_vars", "DR901", "silent", """
    import torch

    class Runner:
        def resume(self, filename):
            checkpoint = torch.load(filename)
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if "param_schedulers" in checkpoint:
                for scheduler, ckpt_scheduler in zip(self.param_schedulers, checkpoint["param_schedulers"]):
                    scheduler.load_state_dict(ckpt_scheduler)
""")

shape("fa_guard_not_followed_zero_init", "DR301", "silent", """
    import torch.nn as nn

    def init_weights(model, zero_init_final_conv=False):
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                if hasattr(m, "final_conv") and zero_init_final_conv:
                    m.weight.data.zero_()
                else:
                    nn.init.kaiming_normal_(m.weight)
""")

shape("fa_noop_device_move", "DR504", "silent", notebook([
    "import torch\nfrom torch import optim\ndevice = torch.device('cuda' if torch.cuda.is_available() else 'cpu')\n",
    "content = load_image('images/octopus.jpg').to(device)\n",
    "target = content.clone().requires_grad_(True).to(device)\n",
    "optimizer = optim.Adam([target], lr=0.003)\nfor ii in range(1, 2001):\n"
    "    loss = torch.mean((target - content) ** 2)\n    optimizer.zero_grad()\n    loss.backward()\n    optimizer.step()\n",
]), "fa_noop_device_move.ipynb")

# ------------------------------------------------------------------------------------------ missed-mutant shapes

shape("ms_ignite_engine_update_fn", "DR102", "report", """
    import torch
    import torch.nn.functional as F
    from ignite.engine import Engine

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(engine, batch):
        x, y = batch
        model.train()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(train_step)
    trainer.run(loader, max_epochs=5)
""")

shape("ms_method_through_instance", "DR102", "report", """
    import torch
    import torch.nn.functional as F

    class Agent:
        def __init__(self):
            self.model = torch.nn.Linear(2, 2)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        def finish_episode(self, x, y):
            loss = F.mse_loss(self.model(x), y)
            loss.backward()
            self.optimizer.step()

    agent = Agent()
    for episode in range(100):
        agent.finish_episode(torch.randn(4, 2), torch.randn(4, 2))
""")

# BasicSR: the model's optimize_parameters() is one iteration, called by the training loop through an object
# built by a registry (`build_model(opt)`); the caller's loop is in the snippet (in BasicSR it is in train.py).
shape("ms_framework_method_optimize_parameters", "DR102", "report", """
    import torch
    from basicsr.models import build_model

    class SRModel:
        def __init__(self, opt):
            self.net_g = build_network(opt["network_g"])
            self.cri_pix = torch.nn.L1Loss()
            self.optimizer_g = torch.optim.Adam(self.net_g.parameters(), lr=1e-4)
        def feed_data(self, data):
            self.lq, self.gt = data["lq"], data["gt"]
        def optimize_parameters(self, current_iter):
            self.output = self.net_g(self.lq)
            l_total = self.cri_pix(self.output, self.gt)
            l_total.backward()
            self.optimizer_g.step()

    def train_pipeline(opt, train_loader, total_iters):
        model = build_model(opt)
        current_iter = 0
        while current_iter <= total_iters:
            for train_data in train_loader:
                current_iter += 1
                model.feed_data(train_data)
                model.optimize_parameters(current_iter)
""")


shape("ms_clear_on_one_branch_only", "DR102", "report", """
    import torch
    import torch.nn.functional as F

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    accum_freq = 1
    for i, (x, y) in enumerate(loader):
        if accum_freq == 1:
            loss = F.mse_loss(model(x), y)
            loss.backward()
        else:
            if (i + 1) % accum_freq > 0:
                continue
            optimizer.zero_grad()
            for j in range(accum_freq):
                loss = F.mse_loss(model(x), y)
                loss.backward()
        optimizer.step()
""")

shape("ms_epoch_scheduler_conditional_step", "DR101", "report", """
    import torch
    import torch.nn.functional as F
    from torch.optim import lr_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda e: 0.9 ** e)
    accumulate = 4
    for epoch in range(10):
        scheduler.step()
        optimizer.zero_grad()
        for i, (x, y) in enumerate(loader):
            loss = F.mse_loss(model(x), y) / accumulate
            loss.backward()
            if i % accumulate == 0:
                optimizer.step()
                optimizer.zero_grad()
""")

shape("ms_model_returns_the_loss", "DR201", "report", """
    import torch

    model = Diffusion(torch.nn.Linear(2, 2))     # forward() returns the training loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gradient_accumulate_every = 4
    for step in range(1000):
        for _ in range(gradient_accumulate_every):
            data = next(dl)
            loss = model(data)
            loss.backward()
        opt.step()
        opt.zero_grad()
""")

shape("ms_ignite_engine_accumulation", "DR201", "report", """
    import torch
    from ignite.engine import Engine

    model = torch.nn.Linear(2, 2)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    accumulation_steps = 4

    def training_step(engine, batch):
        x, y = batch
        loss = criterion(model(x), y)
        loss.backward()
        if engine.state.iteration % accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
        return loss.item()

    trainer = Engine(training_step)
""")

# trl: the trainer switches the Trainer's own division off (`compute_loss_func=`) and the returned loss is not
# divided. (With only `model_accepts_loss_kwargs = False` the Trainer still divides: no bug.) The file imports no
# torch, only transformers.
shape("ms_loss_returned_to_hf_trainer", "DR201", "report", """
    from transformers import Trainer

    class MyTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, compute_loss_func="normalised in compute_loss", **kwargs)
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            loss = outputs.loss
            return (loss, outputs) if return_outputs else loss   # was: loss / self.current_gradient_accumulation_steps
""")


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="rw-shapes-") as tmp:
        for name, code, want, fname, src in SHAPES:
            path = os.path.join(tmp, fname)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(src)
            out = subprocess.run(
                [sys.executable, "-m", "doctor", "check", fname, "--select", code, "--format", "json", "--no-cache",
                 "--exit-zero"], cwd=tmp, capture_output=True, text=True, check=False)
            try:
                found = json.loads(out.stdout)["findings"]
            except (json.JSONDecodeError, KeyError):
                rows.append((name, code, want, "doctor failed", "?"))
                continue
            got = "report" if found else "silent"
            rows.append((name, code, want, got, "ok" if got == want else "NOT YET"))
    print(f"{'shape':42s} {'rule':6s} {'want':7s} {'doctor':7s}")
    for name, code, want, got, ok in rows:
        print(f"{name:42s} {code:6s} {want:7s} {got:7s} {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
