"""Distributed mode on synthetic ranks (no torch, no processes): merging the ranks' runs, which rank failed and
why, the cross-rank checks (rank-sync, data-sharding, rank-skew), the per-rank verdicts, the reports and the
static links, the launcher's options."""

from __future__ import annotations

import json

import pytest

from doctor.core.findings import Finding, Severity
from doctor.probe.options import OptionsError, ProbeOptions
from doctor.probe.ranks import RankOutcome, evaluate_ranks, merge_ranks, parse_stacks
from doctor.probe.runner import ProbeResult
from doctor.report.merged import link_findings
from doctor.report.probe import render_json, render_text

SCRIPT = "/tmp/train_ddp.py"
OPTIONS = ProbeOptions(steps=8, device="cpu", nproc_per_node=2)
PARAMS = ["module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"]


def step_event(i: int, rank: int, *, drift: float = 0.0, same_batches: bool = False, wall: float = 0.01,
               wait: float = 0.001, loss: float = 1.0, grad: float = 0.5, memory: dict | None = None) -> dict:
    sampled = i < 3 or i % 5 == 0
    ev = {"ev": "step", "step": i, "sampled": sampled, "loss": loss * 0.9**i, "lr": [0.1], "wall_s": wall,
          "data_wait_s": wait, "batches": 1, "backwards": 1}
    if memory:
        ev["memory"] = memory
    if sampled:
        bump = drift * rank * (i + 1)
        ev["param_fp"] = {n: [1.0 + k + bump, 10.0 + k + bump] for k, n in enumerate(PARAMS)}
        ev["param_grad_norms"] = {n: grad * (1 + (drift > 0) * 0.2 * rank) for n in PARAMS}
        ev["grad_norm"] = grad
        ev["batch_fp"] = [float(i * 7 + (0 if same_batches else rank * 1000 + 1)), 5.0, 512.0]
        if i == 0:
            ev["param_fp_init"] = {n: [1.0 + k, 10.0 + k] for k, n in enumerate(PARAMS)}
    return ev


def outcome(rank: int, steps: int, *, exit_kind: str | None = "stopped", done: bool = True, error: dict | None = None,
            ended: float = 5.0, ddp: bool = True, samplers: list | None = None, **kw) -> RankOutcome:
    events = [{"ev": "rank", "rank": rank, "local_rank": rank, "world_size": 2, "pid": 1000 + rank},
              {"ev": "start", "device": {"type": "cpu"}},
              {"ev": "params", "params": [{"name": n, "shape": [4], "numel": 4, "requires_grad": True,
                                           "in_optimizer": True, "group": 0} for n in PARAMS], "optimizers": 1},
              {"ev": "dist", "initialized": True, "backend": "gloo", "ddp": ddp,
               "wrappers": ["DistributedDataParallel" if ddp else "Sequential"], **({"ddp_ranks": [0, 1]} if ddp else {}),
               "sharded": ""},
              {"ev": "loss_info", "kind": "cross_entropy", "classes": 4}]
    for s in samplers or []:
        events.append({"ev": "sampler", **s})
    events += [step_event(i, rank, **kw) for i in range(steps)]
    if done:
        events.append({"ev": "done", "steps": steps})
    if exit_kind:
        events.append({"ev": "exit", "kind": exit_kind, "code": 0 if exit_kind == "stopped" else 1,
                       **({"error": error} if error else {})})
    return RankOutcome(events=events, info=events[0], ended_at=ended)


def merged(*outcomes: RankOutcome, timed_out: bool = False) -> ProbeResult:
    run = merge_ranks(list(outcomes), script=SCRIPT, args=[], options=OPTIONS, expected=2, timed_out=timed_out,
                      wall=6.0, launcher_code=0, output_tail=[])
    checks, per_rank = evaluate_ranks(run)
    return ProbeResult(run=run, checks=checks, rank_checks=per_rank)


def check(res: ProbeResult, name: str):
    return next(c for c in res.checks if c.name == name)


# ------------------------------------------------------------------------------------------------ options
def test_launch_options_need_the_distributed_mode_and_pass_through():
    with pytest.raises(OptionsError, match="need --nproc-per-node"):
        ProbeOptions(master_port=29500).validate()
    with pytest.raises(OptionsError, match="--recipe is not supported"):
        ProbeOptions(nproc_per_node=2, recipe=("overfit-batch",)).validate()
    with pytest.raises(OptionsError, match="--nnodes"):
        ProbeOptions(nproc_per_node=2, nnodes="two").validate()
    single = ProbeOptions(nproc_per_node=2).validate().torchrun_args()
    assert single[:2] == ["--nproc-per-node", "2"] and "--standalone" in single and "--max-restarts" in single
    multi = ProbeOptions(nproc_per_node=8, nnodes="2", node_rank=1, rdzv_backend="c10d", rdzv_endpoint="host:29400",
                         master_port=29501).validate().torchrun_args()
    assert "--standalone" not in multi
    for flag, value in (("--nnodes", "2"), ("--node-rank", "1"), ("--rdzv-backend", "c10d"),
                        ("--rdzv-endpoint", "host:29400"), ("--master-port", "29501")):
        assert multi[multi.index(flag) + 1] == value
    # the options travel to every rank in one piece
    assert ProbeOptions.from_json(ProbeOptions(nproc_per_node=2, nnodes="1").to_json()).nproc_per_node == 2


# ------------------------------------------------------------------------------------------------ merging
def test_healthy_ranks_pass_every_cross_rank_check():
    res = merged(outcome(0, 8), outcome(1, 8))
    assert res.run.status == "stopped" and res.exit_code == 0
    assert check(res, "rank-sync").status == "pass" and "identical on ranks 0, 1" in check(res, "rank-sync").summary
    assert check(res, "data-sharding").status == "pass"
    assert check(res, "rank-skew").status == "pass"
    assert set(res.rank_checks) == {0, 1}
    assert check(res, "training-loop").summary == "8 optimizer step(s) observed"  # ranks agree: no rank named


def test_crashed_rank_is_named_and_the_peer_is_collateral():
    boom = {"type": "RuntimeError", "message": "mat1 and mat2 shapes cannot be multiplied", "path": SCRIPT, "line": 46,
            "oom": False, "traceback": []}
    peer = {"type": "RuntimeError", "message": "[gloo/transport/tcp/pair.cc:553] Connection closed by peer",
            "path": SCRIPT, "line": 49, "oom": False, "traceback": []}
    # rank 0's collective fails after rank 1 went away; events of rank 0 arrive first in the list
    res = merged(outcome(0, 3, exit_kind="crash", done=False, error=peer, ended=4.2),
                 outcome(1, 3, exit_kind="crash", done=False, error=boom, ended=4.0))
    run = res.run
    assert run.status == "crashed" and run.distributed["failed_rank"] == 1
    assert run.error.message.startswith("mat1 and mat2")
    assert run.ranks[0].error.message.startswith("stopped after rank 1 failed")
    tl = check(res, "training-loop")
    assert tl.status == "fail" and tl.summary.startswith("rank 1: the script crashed after 3 optimizer step(s)")
    text = render_text(res)
    assert "error (rank 1): RuntimeError: mat1 and mat2" in text
    assert "rank 1   crashed" in text and "stopped after rank 1 failed" in text


def test_killed_rank_without_a_report_is_named_by_its_signal():
    peer = {"type": "RuntimeError", "message": "Connection reset by peer", "path": None, "line": None, "oom": False,
            "traceback": []}
    # the peer's error may reach the parent before the killed rank's connection closes
    killed = outcome(1, 3, exit_kind=None, done=False, ended=3.5)
    killed.exit_code = -9
    res = merged(outcome(0, 3, exit_kind="crash", done=False, error=peer, ended=3.4), killed)
    assert res.run.distributed["failed_rank"] == 1
    assert res.run.error.type == "SIGKILL" and "OOM killer" in res.run.error.message
    assert res.run.ranks[0].error.message.startswith("stopped after rank 1 failed (RuntimeError: Connection reset")


def test_a_rank_stopped_by_the_probe_while_the_others_were_done_is_not_a_crash():
    # no collective: rank 1 made its 8 steps while rank 0 was still starting; the probe stopped rank 0
    slow = outcome(0, 2, exit_kind="terminated", done=False,
                   error={"type": "SIGTERM", "message": "the script was stopped by SIGTERM", "path": None,
                          "line": None, "oom": False, "traceback": []})
    run = merge_ranks([slow, outcome(1, 8)], script=SCRIPT, args=[], options=OPTIONS, expected=2, timed_out=False,
                      stopped_by_us=True)
    assert run.status == "stopped" and run.ranks[0].status == "stopped" and run.ranks[0].error is None
    assert run.ranks[0].rank_info["stopped_waiting"] is True


def test_independent_failures_are_not_relabelled():
    err = {"type": "ValueError", "message": "bad label", "path": SCRIPT, "line": 10, "oom": False, "traceback": []}
    res = merged(outcome(0, 2, exit_kind="crash", done=False, error=err, ended=2.0),
                 outcome(1, 2, exit_kind="crash", done=False, error=err, ended=2.1))
    assert res.run.distributed["failed_rank"] == 0
    assert res.run.ranks[1].error.message == "bad label"  # its own error, not "stopped after rank 0 failed"
    assert check(res, "training-loop").summary.startswith("all 2 ranks:")


def test_timeout_names_the_rank_stuck_in_its_own_code():
    stuck = outcome(1, 3, exit_kind=None, done=False)
    stuck.stacks = parse_stacks(
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n\n'
        "Current thread 0x00007f0000000002 (most recent call first):\n"
        f'  File "{SCRIPT}", line 45 in <module>\n'
        '  File "<frozen runpy>", line 88 in _run_code\n', SCRIPT)
    waiting = outcome(0, 3, exit_kind=None, done=False)
    waiting.stacks = parse_stacks(
        "Current thread 0x00007f0000000003 (most recent call first):\n"
        '  File "/venv/lib/python3.11/site-packages/torch/autograd/graph.py", line 829 in _engine_run_backward\n'
        f'  File "{SCRIPT}", line 49 in <module>\n', SCRIPT)
    assert stuck.stacks["where"] == [SCRIPT, 45] and not stuck.stacks["in_torch"] and waiting.stacks["in_torch"]
    res = merged(waiting, stuck, timed_out=True)
    assert res.run.status == "timeout" and res.run.distributed["slowest_rank"] == 1
    msg = res.run.error.message
    assert "rank 1 stopped making progress after 3 optimizer step(s)" in msg and ":45 in its own code" in msg
    assert "rank 0 after 3" in msg and ":49 waiting inside PyTorch" in msg
    assert res.run.ranks[1].status == "timeout" and res.run.ranks[1].error.line == 45


def test_no_rank_started_is_a_launcher_error():
    run = merge_ranks([], script=SCRIPT, args=[], options=OPTIONS, expected=2, timed_out=False, launcher_code=1,
                      output_tail=["torchrun: error: unrecognized arguments: --bogus"])
    checks, _ = evaluate_ranks(run)
    res = ProbeResult(run=run, checks=checks)
    assert run.status == "crashed" and run.error.type == "LauncherError" and "unrecognized arguments" in run.error.message
    assert res.exit_code == 1 and check(res, "training-loop").status == "fail"
    assert check(res, "rank-sync").status == "skip"


def test_ranks_that_disagree_are_named():
    # rank 1's loss goes non-finite at step 4; rank 0's stays finite
    a, b = outcome(0, 8), outcome(1, 8)
    for ev in b.events:
        if ev.get("ev") == "step" and ev["step"] >= 4:
            ev["loss"] = float("nan")
    res = merged(a, b)
    nf = check(res, "non-finite-loss")
    assert nf.status == "fail" and nf.summary.startswith("rank 1:") and "[rank 1 fail, rank 0 pass]" in nf.summary
    assert nf.evidence["per_rank"]["0"]["status"] == "pass"


# ------------------------------------------------------------------------------------------------ rank-sync
def test_rank_sync_fails_on_diverging_copies_and_names_parameters():
    res = merged(outcome(0, 8, ddp=False, drift=0.01), outcome(1, 8, ddp=False, drift=0.01))
    rs = check(res, "rank-sync")
    assert rs.status == "fail" and res.exit_code == 1
    assert "module.0.weight (off by" in rs.summary and "4 of 4 parameters" in rs.summary
    assert "started from the same weights" in rs.summary and "not averaged" in rs.summary
    assert "no DistributedDataParallel wrapper was seen" in rs.summary
    assert rs.evidence["differing"][0]["name"] == "module.0.weight" and rs.evidence["differing"][0]["rel_diff"] > 1e-3


def test_rank_sync_tolerates_float_noise_and_skips_sharded_parameters():
    res = merged(outcome(0, 8, drift=1e-9), outcome(1, 8, drift=1e-9))
    assert check(res, "rank-sync").status == "pass"
    a, b = outcome(0, 8), outcome(1, 8)
    for o in (a, b):
        next(e for e in o.events if e["ev"] == "dist")["sharded"] = "parameters are DTensors"
    assert check(merged(a, b), "rank-sync").status == "skip"


def test_rank_sync_warns_when_copies_agree_again():
    a, b = outcome(0, 8), outcome(1, 8)
    step1 = next(e for e in b.events if e.get("step") == 1)
    step1["param_fp"] = {n: [v[0] * 1.01, v[1]] for n, v in step1["param_fp"].items()}
    assert check(merged(a, b), "rank-sync").status == "warn"


# ------------------------------------------------------------------------------------------------ data-sharding
def test_data_sharding_fails_on_identical_batches_and_says_why():
    ds = check(merged(outcome(0, 8, same_batches=True), outcome(1, 8, same_batches=True)), "data-sharding")
    assert ds.status == "fail" and "all 2 ranks train on identical batches" in ds.summary
    assert "no DistributedSampler" in ds.summary
    same_rank = [{"index": 0, "iteration": 1, "cls": "DistributedSampler", "epoch": 0, "shuffle": True,
                  "num_replicas": 2, "rank": 0, "step": 0}]
    ds = check(merged(outcome(0, 8, same_batches=True, samplers=same_rank),
                      outcome(1, 8, same_batches=True, samplers=same_rank)), "data-sharding")
    assert ds.status == "fail" and "both have rank=0" in ds.summary


def test_data_sharding_warns_when_the_sampler_epoch_never_changes():
    stuck = [{"index": 0, "iteration": k, "cls": "DistributedSampler", "epoch": 0, "shuffle": True, "num_replicas": 2,
              "rank": r, "step": 2 * k} for k in (1, 2, 3) for r in (0,)]
    ds = check(merged(outcome(0, 8, samplers=stuck), outcome(1, 8, samplers=stuck)), "data-sharding")
    assert ds.status == "warn" and "started 3 epochs with epoch=0" in ds.summary
    moving = [dict(s, epoch=s["iteration"] - 1) for s in stuck]
    assert check(merged(outcome(0, 8, samplers=moving), outcome(1, 8, samplers=moving)), "data-sharding").status == "pass"
    unshuffled = [dict(s, shuffle=False) for s in stuck]
    assert check(merged(outcome(0, 8, samplers=unshuffled), outcome(1, 8, samplers=unshuffled)), "data-sharding").status == "pass"


def test_data_sharding_one_equal_step_is_only_a_warning():
    ds = check(merged(outcome(0, 1, same_batches=True), outcome(1, 1, same_batches=True)), "data-sharding")
    assert ds.status == "warn"


# ------------------------------------------------------------------------------------------------ rank-skew
def test_rank_skew_names_the_rank_waiting_for_data_and_never_fails():
    rs = check(merged(outcome(0, 8, wall=0.1, wait=0.005), outcome(1, 8, wall=0.1, wait=0.06)), "rank-skew")
    assert rs.status == "warn" and "rank 1 waits for data 60%" in rs.summary
    slow = check(merged(outcome(0, 8, wall=0.05), outcome(1, 8, wall=0.2)), "rank-skew")
    assert slow.status == "warn" and "rank 1 takes 200.0 ms per step" in slow.summary
    noise = check(merged(outcome(0, 8, wall=0.002, wait=0.0002), outcome(1, 8, wall=0.004, wait=0.0015)), "rank-skew")
    assert noise.status == "pass"  # 2x the step and 30 points more waiting, but 2 ms: scheduler noise, not a straggler


def test_rank_skew_compares_gpu_memory():
    gib = 1024**3

    def gpu(o: RankOutcome, peak: float) -> RankOutcome:
        next(e for e in o.events if e["ev"] == "start")["device"] = {"type": "cuda", "total_bytes": 80 * gib}
        for e in o.events:
            if e.get("ev") == "step":
                e["memory"] = {"allocated": peak / 2, "reserved": peak, "peak_allocated": peak, "peak_reserved": peak}
        return o

    rs = check(merged(gpu(outcome(0, 8), 74 * gib), gpu(outcome(1, 8), 30 * gib)), "rank-skew")
    assert rs.status == "warn" and "rank 0 peaks at 74.0 GiB" in rs.summary and "rank 0 has 8% of its GPU memory free" in rs.summary
    assert rs.evidence["per_rank"]["1"]["headroom_fraction"] == pytest.approx(50 / 80)


# ------------------------------------------------------------------------------------------------ reports and links
def test_json_and_text_carry_the_ranks():
    res = merged(outcome(0, 8), outcome(1, 8))
    data = json.loads(render_json(res))
    job = data["distributed"]
    assert job["launcher"] == "torch.distributed.run" and [r["rank"] for r in job["ranks"]] == [0, 1]
    assert job["ranks"][1]["pid"] == 1001 and job["ranks"][1]["status"] == "stopped"
    assert {c["name"] for c in job["ranks"][0]["checks"]} >= {"training-loop", "gradient-flow"}
    assert "rank-sync" not in {c["name"] for c in job["ranks"][0]["checks"]}  # cross-rank checks are the job's
    assert [c["code"] for c in data["checks"]][-3:] == ["DP122", "DP123", "DP124"]
    text = render_text(res)
    assert "2 rank(s) under torchrun" in text and "ranks (torch.distributed.run, gloo, world size 2" in text
    from doctor.report.html import render_html

    html = render_html(data)
    assert 'id="ranks"' in html and 'id="chart-rank-step-time"' in html


def _finding(rule: str) -> Finding:
    return Finding(path="train.py", line=12, column=1, end_line=12, end_column=1, rule=rule, code="DR702",
                   severity=Severity.WARNING, message="...")


def test_static_distributed_rules_link_to_the_run():
    stuck = [{"index": 0, "iteration": k, "cls": "DistributedSampler", "epoch": 0, "shuffle": True, "step": k}
             for k in (1, 2)]
    payload = merged(outcome(0, 8, samplers=stuck), outcome(1, 8, samplers=stuck)).to_dict()
    (link,) = link_findings([_finding("sampler-missing-set-epoch")], payload)
    assert link.verdict == "confirmed" and "started 2 epochs with epoch=0" in link.summary
    moving = [dict(s, epoch=s["iteration"]) for s in stuck]
    payload = merged(outcome(0, 8, samplers=moving), outcome(1, 8, samplers=moving)).to_dict()
    assert link_findings([_finding("sampler-missing-set-epoch")], payload)[0].verdict == "contradicted"
    payload = merged(outcome(0, 8, samplers=stuck[:1]), outcome(1, 8, samplers=stuck[:1])).to_dict()
    assert link_findings([_finding("sampler-missing-set-epoch")], payload)[0].verdict == "not-observed"

    same = merged(outcome(0, 8, same_batches=True), outcome(1, 8, same_batches=True)).to_dict()
    (link,) = link_findings([_finding("train-loader-not-shuffled")], same)
    assert link.verdict == "confirmed" and "identical batches" in link.summary
    assert link_findings([_finding("train-loader-not-shuffled")], merged(outcome(0, 8), outcome(1, 8)).to_dict()) == []


def test_unseeded_ranks_without_ddp_confirm_missing_seed():
    a, b = outcome(0, 8, ddp=False), outcome(1, 8, ddp=False)
    step0 = next(e for e in b.events if e.get("step") == 0)
    step0["param_fp_init"] = {n: [v[0] * 1.3, v[1]] for n, v in step0["param_fp_init"].items()}
    (link,) = link_findings([_finding("missing-seed")], merged(a, b).to_dict())
    assert link.verdict == "confirmed" and "started from different weights" in link.summary
