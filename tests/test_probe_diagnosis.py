"""The probe on its own (issue 12): each headline bug fails the check that names its cause, the correct
look-alikes pass, and Karpathy's recipe checks fail their bug class and pass a healthy MLP, CNN and tiny
transformer. Every script runs once, in parallel, in a module-scoped fixture (CPU, 12 steps, tiny models).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch")

from doctor.probe.options import RECIPES  # noqa: E402
from doctor.probe.runner import ProbeResult, run_probe  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probe"
STEPS = 12

# script -> recipe requested
JOBS = {
    "bug_nll_logits.py": (),
    "bug_lr_too_high.py": ("lr-range",),
    "bug_not_in_optimizer.py": (),
    "bug_sorted_labels.py": (),
    "ok_vae_sum.py": (),
    "ok_compiled.py": (),
    "ok_accumulation.py": (),
    "ok_gan.py": (),
    "ok_manual_sgd.py": (),
    "healthy_classifier.py": RECIPES,
    "healthy_cnn.py": RECIPES,
    "healthy_transformer.py": RECIPES,
    "recipe_overfit_fails.py": ("overfit-batch",),
    "recipe_input_ignored.py": ("input-independent",),
    "recipe_batch_mixing.py": ("batch-independence",),
    "killed.py": (),
}
# bug fixture -> (check that must fail, words of the cause it must name)
HEADLINE = {
    "bug_nll_logits.py": ("loss-input", "nll_loss receives raw scores"),
    "bug_lr_too_high.py": ("learning-rate", "learning rate too high"),
    "bug_not_in_optimizer.py": ("optimizer-coverage", "head.weight, head.bias: receive gradients but no optimizer holds them"),
    "bug_sorted_labels.py": ("class-balance", "of the 320 labels seen are class 0"),
}
LOOK_ALIKES = ["ok_vae_sum.py", "ok_compiled.py", "ok_accumulation.py", "ok_gan.py", "ok_manual_sgd.py"]
HEALTHY = ["healthy_classifier.py", "healthy_cnn.py", "healthy_transformer.py"]
RECIPE_BUGS = {
    "recipe_overfit_fails.py": "overfit-batch",
    "recipe_input_ignored.py": "input-independent",
    "recipe_batch_mixing.py": "batch-independence",
    "bug_lr_too_high.py": "lr-range",
}


@pytest.fixture(scope="module")
def runs() -> dict[str, ProbeResult]:
    def go(item):
        name, recipe = item
        return name, run_probe(str(FIXTURES / name), [], steps=STEPS, device="cpu", timeout=120, recipe=recipe)

    # the recipe runs first: three children each
    order = sorted(JOBS.items(), key=lambda kv: -len(kv[1]))
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(go, order))


def _check(res: ProbeResult, name: str):
    return next(c for c in res.checks if c.name == name)


def _table(res: ProbeResult) -> dict:
    return {c.name: (c.status, c.summary) for c in res.checks}


@pytest.mark.parametrize("name", sorted(HEADLINE))
def test_headline_bug_fails_with_its_cause(runs, name):
    res = runs[name]
    check, cause = HEADLINE[name]
    c = _check(res, check)
    assert c.status == "fail" and cause in c.summary, _table(res)
    assert res.exit_code == 1


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_correct_look_alike_passes(runs, name):
    res = runs[name]
    assert res.run.status == "stopped" and res.run.steps_observed == STEPS, (res.run.status, res.run.error)
    assert not [c.name for c in res.checks if c.status == "fail"], _table(res)
    assert _check(res, "initial-loss").status == "pass", _table(res)
    assert res.exit_code == 0
    assert res.run.internal_errors == []


def test_vae_sum_reduction_is_judged_per_element(runs):
    il = _check(runs["ok_vae_sum.py"], "initial-loss")
    assert il.evidence["reduction"] == "sum" and il.evidence["count"] == 64 * 784
    assert 0.8 < il.evidence["ratio"] < 1.25 and il.evidence["first_loss"] > 1e4


def test_compiled_model_runs_under_the_probe(runs):
    res = runs["ok_compiled.py"]
    assert res.run.compiled and res.run.error is None
    assert _check(res, "gradient-flow").status == "pass" and _check(res, "output-diversity").status == "pass"


def test_divided_accumulation_and_norms_before_clipping(runs):
    res = runs["ok_accumulation.py"]
    acc = _check(res, "gradient-accumulation")
    assert acc.status == "pass" and acc.evidence["micro_steps_per_update"] == 4
    assert abs(acc.evidence["median_ratio"] - 0.25) < 0.01
    flow = _check(res, "gradient-flow")
    clip = flow.evidence["clip"]
    assert clip["limit"] == 1.0 and clip["norms_before_clip"]
    # after clip_grad_norm_(…, 1.0) every norm would read <= 1: the recorded ones are from before it
    assert flow.evidence["global_norm"]["max"] > 1.0


def test_gan_models_are_told_apart(runs):
    res = runs["ok_gan.py"]
    names = {p.name for p in res.run.params}
    assert "netD.0.weight" in names and "netG.0.weight" in names
    assert {m["name"] for m in res.run.models} == {"netD", "netG"}
    assert _check(res, "optimizer-coverage").status == "pass"  # G's parameters are held by G's optimizer


def test_hand_written_sgd_counts_as_steps(runs):
    res = runs["ok_manual_sgd.py"]
    tl = _check(res, "training-loop")
    assert tl.status == "pass" and "by hand" in tl.summary and res.run.manual_updates
    assert _check(res, "update-ratio").status == "pass"
    assert _check(res, "gradient-flow").evidence["clip"]["limit"] == 0.25


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_models_pass_the_recipe(runs, name):
    res = runs[name]
    table = _table(res)
    assert all(s in ("pass", "skip") for s, _ in table.values()), table
    for recipe in RECIPES:
        assert table[recipe][0] == "pass", (recipe, table[recipe])
    assert set(res.run.recipe_runs) == {"overfit-batch", "lr-range"}
    assert "overridden" in _check(res, "lr-range").summary


@pytest.mark.parametrize("name", sorted(RECIPE_BUGS))
def test_recipe_check_fails_its_bug_class(runs, name):
    res = runs[name]
    c = _check(res, RECIPE_BUGS[name])
    assert c.status == "fail", _table(res)


def test_recipe_checks_only_when_asked(runs):
    names = {c.name for c in runs["ok_gan.py"].checks}
    assert not names & set(RECIPES)
    assert {c.name for c in runs["recipe_input_ignored.py"].checks} & set(RECIPES) == {"input-independent"}


def test_batch_norm_is_the_known_exception(runs):
    bi = _check(runs["healthy_cnn.py"], "batch-independence")
    assert bi.status == "pass" and "batch norm" in bi.summary


def test_hard_kill_keeps_the_unsampled_steps(runs):
    res = runs["killed.py"]
    assert res.run.status == "crashed" and res.run.error.type == "SIGKILL"
    assert res.run.steps_observed == 8  # steps 6 and 7 are not sampled: streamed at once, without their loss
    tl = _check(res, "training-loop")
    assert tl.status == "fail" and "crashed after 8" in tl.summary
