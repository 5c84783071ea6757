"""`doctor probe` on the command line: exit codes, usage errors, the text and JSON outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probe"


def _doctor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doctor", *args], capture_output=True, text=True, timeout=timeout)


def test_missing_script_is_usage_error():
    proc = _doctor("probe", "no/such/script.py")
    assert proc.returncode == 2
    assert "no such script" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_option_is_usage_error():
    proc = _doctor("probe", str(FIXTURES / "healthy_regression.py"), "--device", "tpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = _doctor("probe", str(FIXTURES / "healthy_regression.py"), "--steps", "0")
    assert proc.returncode == 2


def test_cuda_without_gpu_is_usage_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _doctor("probe", str(FIXTURES / "healthy_regression.py"), "--device", "cuda", "-q")
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr


def test_text_report_and_script_args(tmp_path):
    # the script's own arguments go after `--`; its output goes to stderr, the report to stdout.
    proc = _doctor("probe", str(FIXTURES / "healthy_classifier.py"), "--steps", "8", "--no-color", "--", "--epochs", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "stopped after 8/8 step(s)" in out
    assert "DP105  gradient-flow" in out and "\033[" not in out
    assert "loss  " in out and any(ch in out for ch in "▁▂▃▄▅▆▇█")
    assert "gradient norm per parameter" in out and "memory" in out


def test_json_to_file_and_exit_code(tmp_path):
    out = tmp_path / "report.json"
    proc = _doctor("probe", str(FIXTURES / "trip_update_ratio.py"), "--steps", "6", "--format", "json", "-o", str(out), "-q")
    assert proc.returncode == 1
    assert proc.stdout == ""
    data = json.loads(out.read_text())
    assert data["exit_code"] == 1
    assert {c["name"]: c["status"] for c in data["checks"]}["update-ratio"] == "fail"


def test_rules_and_explain_know_the_runtime_checks():
    proc = _doctor("rules", "--all", "--format", "json")
    assert proc.returncode == 0
    runtime = [r for r in json.loads(proc.stdout) if r["kind"] == "runtime"]
    assert [r["code"] for r in runtime] == [f"DP1{i:02d}" for i in range(1, 25)]
    proc = _doctor("explain", "update-ratio")
    # The page shows the thresholds' values, not the names of the constants holding them.
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "‖Δw‖/‖w‖" in text
    assert "HIGH_WARN" not in text and 'warns "too large" above 0.1 and fails above 1 ' in text


def test_unknown_recipe_is_a_usage_error():
    proc = _doctor("probe", str(FIXTURES / "healthy_regression.py"), "--recipe", "overfit,lr-range")
    assert proc.returncode == 2 and "unknown recipe overfit" in proc.stderr and "Traceback" not in proc.stderr
    help_text = _doctor("probe", "--help").stdout
    assert "--recipe" in help_text and "overfit-batch" in help_text and "--recipe-steps" in help_text
