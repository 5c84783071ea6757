"""Big inputs: time and memory of `doctor check` on one big file, and of `doctor check --fix` on many files.

    python benchmarks/bench_big.py                      # everything, generated inputs in a temp folder
    python benchmarks/bench_big.py --only big-file      # one 5 MB file (two shapes) and the linearity series
    python benchmarks/bench_big.py --only fix-many      # --fix on 400 files of 110 KB

Targets (issue 14): linear time and memory in file size; a 5 MB file under 10 s and 300 MB; `--fix` on 400
files of 110 KB under 60 s. Each run is a fresh `python -m doctor` process (interpreter start-up included);
wall time, CPU time (user + system, the process and the workers it waited for) and peak RSS (the largest
single process) come from `os.wait4`. The machine's load average is printed with each row: on a shared box
wall time follows the load, CPU time much less.

Inputs are generated (never real projects' code): `training code` repeats a realistic training module (model
classes with their init, a dataset, metrics, checkpointing, a training loop with AMP and accumulation, an
evaluation loop, an argument parser); `dense loops` is the worst case, a training loop and a model class in
every 650 bytes; `data table` is a module that is one big literal (a generated weight table).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

MODULE = '''

class ConvBlock{i}(nn.Module):
    """Conv -> BN -> ReLU, with a residual connection when the shapes allow it."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.residual = cin == cout and stride == 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.act(self.bn(self.conv(x)))
        return out + x if self.residual else out


class Net{i}(nn.Module):
    def __init__(self, num_classes=10, width=32):
        super().__init__()
        self.stem = ConvBlock{i}(3, width)
        self.blocks = nn.Sequential(*[ConvBlock{i}(width, width) for _ in range(4)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(self.dropout(self.pool(x).flatten(1)))


class ImageFolder{i}(torch.utils.data.Dataset):
    def __init__(self, root, split="train", size=32):
        self.items = sorted(os.path.join(root, split, f) for f in os.listdir(os.path.join(root, split)))
        self.size = size
        self.mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
        self.std = np.array([0.229, 0.224, 0.225], dtype=np.float32)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image = np.load(self.items[index]).astype(np.float32) / 255.0
        if image.shape[0] != self.size:
            image = image[: self.size, : self.size]
        image = (image - self.mean) / self.std
        label = int(os.path.basename(self.items[index]).split("_")[0])
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), label


class AverageMeter{i}:
    def __init__(self):
        self.sum = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.sum += value * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def accuracy_{i}(logits, target, topk=(1, 5)):
    maxk = max(topk)
    _, pred = logits.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0) for k in topk]


def save_checkpoint_{i}(path, model, optimizer, scheduler, epoch):
    torch.save({{"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch}}, path)


def train_one_epoch_{i}(model, loader, optimizer, scheduler, scaler, criterion, device, accum_steps=2):
    model.train()
    meter = AverageMeter{i}()
    optimizer.zero_grad(set_to_none=True)
    for step, (images, target) in enumerate(loader):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with torch.autocast(device_type="cuda", enabled=scaler.is_enabled()):
            loss = criterion(model(images), target) / accum_steps
        scaler.scale(loss).backward()
        if (step + 1) % accum_steps == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        meter.update(loss.item() * accum_steps, images.size(0)){bug}
    return meter.avg


@torch.no_grad()
def evaluate_{i}(model, loader, criterion, device):
    model.eval()
    loss_meter, top1 = AverageMeter{i}(), AverageMeter{i}()
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        logits = model(images)
        loss_meter.update(criterion(logits, target).item(), images.size(0))
        top1.update(accuracy_{i}(logits, target, topk=(1,))[0].item(), images.size(0))
    return loss_meter.avg, top1.avg


def main_{i}(argv=None):
    parser = argparse.ArgumentParser(description="train a small CNN")
    parser.add_argument("--data", default="data")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Net{i}().to(device)
    train_loader = torch.utils.data.DataLoader(ImageFolder{i}(args.data), batch_size=args.batch_size, shuffle=True)
    val_loader = torch.utils.data.DataLoader(ImageFolder{i}(args.data, "val"), batch_size=256)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * len(train_loader))
    scaler = torch.cuda.amp.GradScaler(enabled=device == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(args.epochs):
        train_loss = train_one_epoch_{i}(model, train_loader, optimizer, scheduler, scaler, criterion, device)
        val_loss, val_acc = evaluate_{i}(model, val_loader, criterion, device)
        print(f"epoch {{epoch}}: train {{train_loss:.3f}} val {{val_loss:.3f}} acc {{val_acc:.1f}}")
        save_checkpoint_{i}(f"ckpt_{{epoch}}.pt", model, optimizer, scheduler, epoch)
'''
HEADER = "import argparse\nimport os\n\nimport numpy as np\nimport torch\nimport torch.nn as nn\n"
#: The one mistake per file for the --fix run: a running total of attached losses (a safe fix: `.detach()`).
BUG = "\n        running_loss += loss"

DENSE = '''

class Dense{i}(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(10, 10)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(self.fc(x))


def train_dense_{i}(model, loader, epochs=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        sched.step()
    return model
'''


def training_code(size: int, bug: bool = False, first: int = 0) -> str:
    """``first``: the number of the first module (files of one project get names of their own)."""
    out, total, i = [HEADER], len(HEADER), first
    while total < size:
        block = MODULE.format(i=i, bug=BUG if bug and i == first else "")
        if bug and i == first:
            block = block.replace(f"    meter = AverageMeter{i}()\n", f"    meter = AverageMeter{i}()\n    running_loss = 0\n")
        out.append(block)
        total += len(block)
        i += 1
    return "".join(out)


def dense_loops(size: int) -> str:
    out, total, i = ["import torch\n"], 13, 0
    while total < size:
        block = DENSE.format(i=i)
        out.append(block)
        total += len(block)
        i += 1
    return "".join(out)


def data_table(size: int) -> str:
    out, total, i = ["import torch\n\nWEIGHTS = [\n"], 25, 0
    while total < size:
        row = "    [" + ", ".join(f"{(i * 7 + j) % 1000 / 997:.6f}" for j in range(8)) + "],\n"
        out.append(row)
        total += len(row)
        i += 1
    out.append("]\nTABLE = torch.tensor(WEIGHTS)\n")
    return "".join(out)


def run(args: list[str], cwd: str) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (with the workers), peak RSS in MB (largest process), exit code."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "doctor", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024, proc.returncode


def row(label: str, measured: tuple[float, float, int, int]) -> None:
    wall, cpu, rss, code = measured
    load = os.getloadavg()[0]
    print(f"| {label} | {wall:6.2f} s | {cpu:6.2f} s | {rss:5d} MB | {code} | {load:.1f} |", flush=True)


def bench_big_file(tmp: str, repeats: int) -> None:
    print("\n### One big file: `doctor check FILE --no-cache` (2 cores: parts checked in 2 processes)\n")
    print("| input | wall | CPU | peak RSS | exit | load |\n|---|---|---|---|---|---|")
    for name, make in (("training code", training_code), ("dense loops", dense_loops), ("data table", data_table)):
        for mb in (1.25, 2.5, 5.0):
            # Each file in a folder of its own: doctor reads a file's neighbours (callers in the project).
            folder = os.path.join(tmp, f"{name.replace(' ', '_')}_{mb}")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, "train.py")
            with open(path, "w") as fh:
                fh.write(make(int(mb * 1_000_000)))
            for _ in range(repeats):
                row(f"{name}, {os.path.getsize(path) / 1e6:.2f} MB", run(["check", path, "--no-cache", "--exit-zero"], tmp))
    path = os.path.join(tmp, "training_code_5.0", "train.py")
    row("training code, 5 MB, `-j 1`", run(["check", path, "--no-cache", "--exit-zero", "-j", "1"], tmp))


def bench_fix_many(tmp: str, files: int, size: int) -> None:
    folder = os.path.join(tmp, "many")
    os.makedirs(folder, exist_ok=True)
    for k in range(files):
        # Names of their own per file (a project's modules define different functions and classes; the
        # methods `forward`, `update`, `__getitem__`... are common to all, as in real code).
        code = training_code(size, bug=True, first=k * 1000)
        with open(os.path.join(folder, f"train_{k:03d}.py"), "w") as fh:
            fh.write(code)
    print(f"\n### `doctor check --fix` on {files} files of {len(code) / 1000:.0f} KB, one safe fix each\n")
    print("| run | wall | CPU | peak RSS | exit | load |\n|---|---|---|---|---|---|")
    row("check (no fix), `--no-cache`", run(["check", folder, "--no-cache", "--exit-zero"], tmp))
    row("`--fix --no-cache`", run(["check", folder, "--fix", "--no-cache"], tmp))
    fixed = sum("running_loss += loss.detach()" in open(os.path.join(folder, f)).read() for f in os.listdir(folder))
    print(f"\nfiles fixed: {fixed} of {files}")
    row("second `--fix --no-cache` (nothing left to fix)", run(["check", folder, "--fix", "--no-cache"], tmp))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["big-file", "fix-many"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--size", type=int, default=110_000)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    tmp = tempfile.mkdtemp(prefix="doctor-bench-big-")
    try:
        if args.only in (None, "big-file"):
            bench_big_file(tmp, args.repeats)
        if args.only in (None, "fix-many"):
            bench_fix_many(tmp, args.files, args.size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
