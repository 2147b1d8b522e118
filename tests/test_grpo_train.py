"""The GRPO trainer end to end on a tiny random VLM and synthetic prompts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fixtures.worlds import checkpoint_weights, tiny_world
from safetensors.torch import load_file

import r1v2.train.grpo as grpo_mod
from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.train.grpo import GRPOConfig, train
from r1v2.train.metrics import read_metrics

REQUIRED = [
    "step",
    "reward_mean",
    "reward_accuracy",
    "reward_format",
    "effective_ratio",
    "effective_ratio_before_replay",
    "zero_std_group_fraction",
    "kl",
    "clip_fraction",
    "response_length_mean",
    "ssb_size",
    "replayed",
    "replayed_advantage_sum",
    "loss",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    tiny_world(root, 24)
    return root


def _args(world, out, *extra):
    return [
        f"model={world / 'vlm'}",
        f"data={world / 'data'}",
        f"output_dir={out}",
        "max_steps=3",
        "save_steps=2",
        "prompts_per_step=4",
        "group_size=4",
        "generation.max_new_tokens=12",
        "progress=false",
        "tensorboard=false",
        "prompts_per_generate=2",
        *extra,
    ]


def test_loop_logs_every_metric_and_checkpoints(world, tmp_path):
    out = tmp_path / "run"
    train(
        resolve(
            GRPOConfig,
            None,
            _args(world, out, f"probe_data={world / 'data'}", "probe_every=2", "probe_size=4"),
        )
    )
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {
        "step",
        "probe_accuracy",
        "probe_unscored",
        "hallucination_rate",
        "guard_streak",
    }
    rows = rows[1:]
    for r in rows:
        assert set(REQUIRED) <= set(r), set(REQUIRED) - set(r)
        assert r["rollouts"] == 16.0
    assert "hallucination_rate" in rows[1] and "hallucination_rate" in rows[2]
    assert "hallucination_rate" not in rows[0]
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"  # the run's own curves
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-00000002",
        "checkpoint-00000003",
    ]
    before = load_file(str(world / "vlm" / "model.safetensors"))
    after = checkpoint_weights(out, 3)
    adapter = {k for k in before if "multi_modal_projector" in k}
    assert {k.removeprefix("model.") for k in after} == adapter  # adapter-only training
    assert any(not torch.equal(v, before[k.removeprefix("model.")]) for k, v in after.items())
    # the run ends with an ordinary transformers checkpoint of the trained weights
    from transformers import AutoModelForImageTextToText, AutoProcessor

    final = AutoModelForImageTextToText.from_pretrained(out / "final")
    AutoProcessor.from_pretrained(out / "final")
    loaded = dict(final.named_parameters())
    for k, v in after.items():
        assert torch.equal(loaded[k], v), k


def test_ssb_on_and_off(world, tmp_path):
    on = tmp_path / "on"
    off = tmp_path / "off"
    train(resolve(GRPOConfig, None, _args(world, on, "max_steps=4")))
    train(resolve(GRPOConfig, None, _args(world, off, "max_steps=4", "ssb.enabled=false")))
    r_on, r_off = read_metrics(on / "metrics.jsonl"), read_metrics(off / "metrics.jsonl")
    # Step 1 is the same in both runs (same seed, empty buffer): nothing to replay yet.
    assert r_on[0]["effective_ratio_before_replay"] == r_off[0]["effective_ratio_before_replay"]
    assert r_on[0]["replayed"] == 0
    for r in r_off:
        assert r["replayed"] == 0 and r["ssb_size"] == 0 and r["replayed_advantage_sum"] == 0
        assert r["effective_ratio"] == r["effective_ratio_before_replay"]
    for prev, r in zip(r_on, r_on[1:]):
        assert r["effective_ratio"] >= r["effective_ratio_before_replay"]
        # ssb_size is logged after the step's own samples are added, i.e. before the next replay
        if r["effective_ratio_before_replay"] < 0.6 and prev["ssb_size"] > 0:
            assert r["replayed"] > 0  # a non-empty buffer fills zero-advantage slots
    assert sum(r["replayed"] for r in r_on) > 0
    assert r_on[-1]["ssb_size"] > 0


def test_nan_loss_skips_then_aborts_keeping_last_checkpoint(world, tmp_path, monkeypatch):
    real = grpo_mod.policy_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 1 else loss), metrics

    monkeypatch.setattr(grpo_mod, "policy_loss", flaky)
    out = tmp_path / "nan"
    with pytest.raises(R1V2Error, match=r"2 non-finite losses in a row .*checkpoint-00000001"):
        train(
            resolve(
                GRPOConfig,
                None,
                _args(
                    world,
                    out,
                    "save_steps=1",
                    "max_steps=5",
                    "nan_patience=2",
                    "micro_batch_size=16",
                ),
            )
        )
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["skipped_steps"] for r in rows] == [0.0, 1.0, 2.0]
    # Skipped steps leave the weights as the last good step left them.
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-00000001"]


def test_raising_reward_component_is_counted(world, tmp_path, monkeypatch):
    import r1v2.rewards.hybrid as hybrid

    def broken(completion):
        raise RuntimeError("format checker broke")

    monkeypatch.setattr(hybrid, "format_reward", broken)
    out = tmp_path / "broken"
    train(resolve(GRPOConfig, None, _args(world, out, "max_steps=1")))
    row = read_metrics(out / "metrics.jsonl")[0]
    assert row["reward_format_errors"] == 16.0 and row["reward_total_none"] == 16.0


def _cli(world, out, *extra, launcher=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*launcher, "-m", "r1v2", "grpo", *_args(world, out, *extra)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(world, tmp_path):
    """Bitwise on the CPU: the killed-and-resumed run ends with the uninterrupted run's weights."""
    extra = ("max_steps=8", "save_steps=2", "generation.max_new_tokens=24")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _cli(world, full, *extra, launcher=(sys.executable,)).wait() == 0
    proc = _cli(world, cut, *extra, launcher=(sys.executable,))
    deadline = time.time() + 120
    while not (cut / "checkpoint-00000002" / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoint-00000008").exists(), "the run finished before it was killed"
    resumed = _cli(world, cut, *extra, launcher=(sys.executable,))
    log = resumed.communicate()[0].decode()
    assert resumed.returncode == 0, log
    assert "starting at step 0 " not in log
    assert "done: 8 steps in " in log and f"curves: {cut / 'metrics.png'}" in log
    a, b = checkpoint_weights(full, 8), checkpoint_weights(cut, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(cut / "metrics.jsonl")]
    assert steps == list(range(1, 9))  # the log reads like one uninterrupted run


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")


@pytest.mark.slow
@pytest.mark.parametrize(
    "sharding, trainable, tol, extra",
    [
        ("replicate", "adapter", 1e-7, ("ssb.enabled=false",)),
        ("replicate", "adapter", 1e-7, ("aggregation=token-mean", "max_steps=5")),
        ("fsdp", "all", 1e-6, ("ssb.enabled=false",)),
    ],
    ids=["replicate", "token-mean+ssb", "fsdp"],
)
def test_two_processes_equal_one_process_with_accumulation(
    world, tmp_path, sharding, trainable, tol, extra
):
    """2 processes x 8 sequences == 1 process x 16 sequences in 2 micro-batches of 8, with the
    model replicated (gradients all-reduced) or sharded with FSDP2 (every weight trains); and
    with ``token-mean`` (the two ranks' sequences have different lengths, so each rank's
    token count differs from half the step's) and the Selective Sample Buffer on (one replay
    decision over the gathered batch).

    Tolerance: absolute, on the trained weights, whose updates here are ~1e-4 per step (only
    the float summation order differs: per-process padding and the gradient reduction).
    """
    common = ("micro_batch_size=8", "kl_coef=0.01", f"trainable={trainable}", *extra)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _cli(world, one, *common, launcher=(sys.executable,)).wait() == 0
    proc = _cli(world, two, *common, f"sharding={sharding}", launcher=TORCHRUN)
    log = proc.communicate()[0].decode()
    assert proc.returncode == 0, log
    last = read_metrics(one)[-1]["step"]
    assert (two / f"checkpoint-{last:08d}" / "rng-rank1.pt").is_file()  # two processes ran
    a, b = checkpoint_weights(one, last), checkpoint_weights(two, last)
    assert sorted(a) == sorted(b)
    start = load_file(str(world / "vlm" / "model.safetensors"))
    for k in a:
        assert (a[k] - b[k]).abs().max() < tol, k
    base = {k: start.get(k, start.get(k.removeprefix("model."))) for k in a}
    moved = max((a[k] - v).abs().max() for k, v in base.items() if v is not None)
    assert moved > 1e-6  # the runs did move
    m1 = read_metrics(one / "metrics.jsonl")
    m2 = read_metrics(two / "metrics.jsonl")
    assert len(m1) == len(m2) == last
    for r1, r2 in zip(m1, m2):
        for key in ("reward_mean", "response_length_mean", "effective_ratio", "replayed"):
            assert r1[key] == pytest.approx(r2[key], abs=1e-9), key
        for key in ("kl", "loss", "clip_fraction"):
            assert r1[key] == pytest.approx(r2[key], rel=1e-4, abs=1e-9), key
    if "ssb.enabled=false" not in extra:
        assert sum(r["replayed"] for r in m2) > 0  # the buffer did replay
    if "aggregation=token-mean" in extra:  # the ranks' shards had different token counts
        assert any(r["response_length_mean"] != 12 for r in m1)


@pytest.mark.slow
def test_fsdp_resume_matches_uninterrupted_run(world, tmp_path):
    """Sharded run stopped after its step-2 checkpoint, resumed to step 3: the same weights as
    a sharded run of 3 steps (the checkpoint holds whole weights and optimizer state)."""
    common = ("ssb.enabled=false", "trainable=all", "sharding=fsdp")
    full, cut = tmp_path / "full", tmp_path / "cut"
    for out, steps in ((full, 3), (cut, 2), (cut, 3)):
        proc = _cli(world, out, *common, f"max_steps={steps}", launcher=TORCHRUN)
        log = proc.communicate()[0].decode()
        assert proc.returncode == 0, log
    assert "starting at step 2 of 3" in log
    a, b = checkpoint_weights(full, 3), checkpoint_weights(cut, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_configs_are_clear(world, tmp_path):
    with pytest.raises(R1V2Error, match="group_size"):
        resolve(GRPOConfig, None, _args(world, tmp_path, "group_size=1"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(R1V2Error, match="no samples"):
        train(resolve(GRPOConfig, None, _args(world, tmp_path / "o", f"data={empty}")))


def test_second_ppo_epoch_moves_the_ratio(world, tmp_path):
    """With mu=1 the ratio is exactly 1 (old = current); a second iteration sees the update."""
    one, two = tmp_path / "mu1", tmp_path / "mu2"
    train(resolve(GRPOConfig, None, _args(world, one, "max_steps=2", "optim.lr=0.01")))
    train(
        resolve(GRPOConfig, None, _args(world, two, "max_steps=2", "optim.lr=0.01", "ppo_epochs=2"))
    )
    r1, r2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert all(r["approx_kl"] == 0.0 for r in r1)
    assert any(r["approx_kl"] != 0.0 for r in r2 if r["loss"] != 0.0)


def test_policy_update_moves_log_probs_with_the_advantage_sign(world):
    """One update with A = (+1, -1): the first completion gets likelier, the second less so."""
    from r1v2.data import load_samples
    from r1v2.model.freeze import set_trainable
    from r1v2.model.policy import Policy

    cfg = resolve(GRPOConfig, None, ["optim.lr=0.01", "kl_coef=0", "generation.max_new_tokens=8"])
    policy = Policy.from_pretrained(world / "vlm")
    set_trainable(policy.model, "adapter")
    item = load_samples(world / "data").samples[0]
    torch.manual_seed(1)
    out = policy.generate([item], cfg.generation, group_size=2)
    trajs = [
        grpo_mod.Trajectory(item, row[m]) for row, m in zip(out.completion_ids, out.completion_mask)
    ]
    assert not torch.equal(trajs[0].completion, trajs[1].completion)
    batch = grpo_mod.collate(policy, trajs)
    prompts, index, ids, mask = batch

    def seq_logps():
        with torch.no_grad():
            return policy.logprobs(prompts, ids, mask, prompt_index=index).sum(dim=1)  # [2]

    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before = seq_logps()
    metrics, stepped = grpo_mod.policy_update(
        policy,
        batch,
        torch.tensor([1.0, -1.0]),
        cfg=cfg,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
    )
    after = seq_logps()
    assert stepped and metrics["ratio_mean"] == pytest.approx(1.0)
    assert after[0] > before[0] and after[1] < before[1]


def _rollout_batch(world, n_prompts=4, group=4, temperature=1.0, seed=3):
    """A policy (adapter trainable) and a real batch of its sampled completions."""
    from r1v2.data import load_samples
    from r1v2.model.freeze import set_trainable
    from r1v2.model.policy import Policy

    policy = Policy.from_pretrained(world / "vlm")
    set_trainable(policy.model, "adapter")
    items = load_samples(world / "data").samples[:n_prompts]
    cfg = resolve(
        GRPOConfig, None, ["generation.max_new_tokens=10", f"generation.temperature={temperature}"]
    )
    torch.manual_seed(seed)
    out = policy.generate(items, cfg.generation, group_size=group)
    trajs = [
        grpo_mod.Trajectory(items[i // group], row[m])
        for i, (row, m) in enumerate(zip(out.completion_ids, out.completion_mask))
    ]
    return policy, grpo_mod.collate(policy, trajs)


def _update(policy, batch, advantages, overrides, reference=None, optimizer_cls=None):
    cfg = resolve(GRPOConfig, None, overrides)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    if optimizer_cls is None:
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr)
    else:
        optimizer = optimizer_cls(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return grpo_mod.policy_update(
        policy,
        batch,
        advantages,
        cfg=cfg,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        reference=reference,
    )


def test_logged_metrics_do_not_depend_on_micro_batch_size(world):
    """16 sequences in micro-batches of 4 or of 16, two update iterations (so the ratio moves
    and clips), KL against a perturbed reference: the logged kl, clip fraction, approx_kl and
    loss are the whole step's, whatever the split (each micro-batch's share of kl used to be
    weighted again by its size: a quarter of the truth at 4 of 16)."""
    import copy

    from r1v2.train.reference import Reference

    policy, batch = _rollout_batch(world)
    ref = Reference(policy.model)
    with torch.no_grad():  # the policy moves away from pi_ref
        for p in policy.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    start = copy.deepcopy(policy.model.state_dict())
    advantages = torch.linspace(-1.5, 1.5, 16)
    common = ["optim.lr=0.05", "ppo_epochs=2", "kl_coef=0.1", "clip_low=0.05", "clip_high=0.05"]
    logged = []
    for micro in (4, 16):
        policy.model.load_state_dict(start)
        metrics, stepped = _update(
            policy, batch, advantages, [*common, f"micro_batch_size={micro}"], reference=ref
        )
        assert stepped
        logged.append(metrics)
    a, b = logged
    assert a["kl"] > 1e-4 and a["clip_frac"] > 0  # the quantities under test are not trivially 0
    for key in ("kl", "pg_loss", "loss", "clip_frac", "approx_kl", "ratio_mean"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key


def test_update_scores_tokens_at_the_sampling_temperature(world):
    """Rollouts sampled at T = 0.7: one plain SGD step (lr 1, no clipping, mu 1, no KL) moves
    the weights by minus the gradient of eq. 8 with log-probs of softmax(logits / 0.7)."""
    policy, batch = _rollout_batch(world, temperature=0.7)
    prompts, index, ids, mask = batch
    advantages = torch.linspace(-1.0, 1.0, 16)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    logps = policy.logprobs(prompts, ids, mask, prompt_index=index, temperature=0.7)
    loss, _ = grpo_mod.policy_loss(logps, logps.detach(), advantages, mask)
    want = torch.autograd.grad(loss, params)
    overrides = ["generation.temperature=0.7", "kl_coef=0", "optim.max_grad_norm=0"]
    _, stepped = _update(
        policy, batch, advantages, overrides, optimizer_cls=lambda ps: torch.optim.SGD(ps, lr=1.0)
    )
    assert stepped
    for p, b, g in zip(params, before, want):
        torch.testing.assert_close(b - p.detach(), g, rtol=1e-4, atol=1e-7)
    # At T = 1 the gradient is another one: the test can tell them apart.
    logps1 = policy.logprobs(prompts, ids, mask, prompt_index=index)
    other = torch.autograd.grad(
        grpo_mod.policy_loss(logps1, logps1.detach(), advantages, mask)[0], params
    )
    assert max((a - b).abs().max() for a, b in zip(other, want)) > 1e-3


def test_probe_counts_unscored_answers_apart(world):
    """The probe's accuracy is over answers that could be graded; a reference that cannot be
    graded (letter Z of two choices) is counted as unscored, not as a wrong answer."""
    import dataclasses
    from types import SimpleNamespace

    from r1v2.data import load_samples

    a, b, c = load_samples(world / "data").samples[:3]
    items = [
        dataclasses.replace(a, answer="3"),
        dataclasses.replace(b, answer="4"),
        dataclasses.replace(c, answer="Z", choices=("x", "y")),
    ]

    class Fake:
        def generate(self, batch, sampling):
            return SimpleNamespace(texts=["</think> \\boxed{3}"] * len(batch))

    from r1v2.eval.greedy import probe

    out = probe(Fake(), items, max_new_tokens=8)
    assert out["probe_accuracy"] == 0.5 and out["probe_unscored"] == 1.0


def test_resume_refuses_another_config_and_a_finished_past_run(world, tmp_path):
    out = tmp_path / "run"
    train(resolve(GRPOConfig, None, _args(world, out, "max_steps=2")))
    with pytest.raises(R1V2Error, match=r"group_size \(4 -> 2\)"):
        train(resolve(GRPOConfig, None, _args(world, out, "max_steps=3", "group_size=2")))
    with pytest.raises(R1V2Error, match="past max_steps=1"):
        train(resolve(GRPOConfig, None, _args(world, out, "max_steps=1")))
    # raising max_steps continues the same run
    train(resolve(GRPOConfig, None, _args(world, out, "max_steps=3")))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_resume_refuses_prompts_whose_answers_changed(tmp_path):
    """GRPO resumed on a pool whose answers were edited is refused, naming the data."""
    world = tiny_world(tmp_path / "w", 8)
    out = tmp_path / "run"
    train(resolve(GRPOConfig, None, _args(world, out, "max_steps=1", "save_steps=1")))
    samples = world / "data" / "samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["answer"] = "99"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(R1V2Error, match=r"trained on other data: the rows of .*data changed"):
        train(resolve(GRPOConfig, None, _args(world, out, "max_steps=2")))


def test_a_new_run_never_touches_an_earlier_one_without_overwrite(world, tmp_path):
    out = tmp_path / "run"
    train(resolve(GRPOConfig, None, _args(world, out, "max_steps=2", "save_steps=1")))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    metrics_before = (out / "metrics.jsonl").read_text()
    with pytest.raises(R1V2Error, match="holds an earlier run.*overwrite=true"):
        train(resolve(GRPOConfig, None, _args(world, out, "resume=never")))
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert (out / "metrics.jsonl").read_text() == metrics_before
    # files but no checkpoint: refused too (resume=auto has nothing to continue)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(R1V2Error, match="no checkpoint to resume"):
        train(resolve(GRPOConfig, None, _args(world, other)))
    assert (other / "mine.txt").read_text() == "keep me"
    # a bad input with overwrite=true still leaves the earlier run alone (validated first)
    with pytest.raises(R1V2Error):
        train(
            resolve(
                GRPOConfig,
                None,
                _args(
                    world,
                    out,
                    "resume=never",
                    "overwrite=true",
                    f"data={tmp_path / 'missing.jsonl'}",
                ),
            )
        )
    assert (out / "metrics.jsonl").read_text() == metrics_before
    # overwrite=true replaces it: only the new run's checkpoints and metrics remain
    train(
        resolve(
            GRPOConfig, None, _args(world, out, "resume=never", "overwrite=true", "max_steps=1")
        )
    )
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-00000001"]
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_constant_schedule_honours_warmup():
    """optim.schedule=constant with warmup_steps=2, lr 1e-3: lr 0, 5e-4, then 1e-3 on (the
    plain transformers 'constant' schedule would have skipped the warmup)."""
    from transformers import get_scheduler

    cfg = resolve(GRPOConfig, None, ["optim.warmup_steps=2", "optim.lr=1e-3"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = get_scheduler(
        grpo_mod.schedule_name(cfg.optim), opt, num_warmup_steps=2, num_training_steps=10
    )
    lrs = []
    for _ in range(4):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    assert grpo_mod.schedule_name(resolve(GRPOConfig).optim) == "constant"


@pytest.mark.parametrize("action", ["stop", "rollback"])
def test_hallucination_guard_stops_or_rolls_back_grpo(world, tmp_path, monkeypatch, action):
    """Probe rates 0.2 (step 0), 0.25, 0.5, 0.6 with tolerance 0.1 and patience 2: steps 2 and
    3 are above 0.3, so the guard fires at step 3 and the run ends there (of 6). With
    rollback the final weights are those of the best probe (accuracy peaks at step 1)."""
    import r1v2.eval.greedy as greedy

    rates = iter([0.2, 0.25, 0.5, 0.6, 0.6, 0.6, 0.6])
    accuracy = iter([0.1, 0.5, 0.3, 0.2, 0.2, 0.2, 0.2])

    def fake_probe(engine, samples, *, max_new_tokens):
        return {
            "probe_accuracy": next(accuracy),
            "probe_unscored": 0.0,
            "hallucination_rate": next(rates),
        }

    monkeypatch.setattr(greedy, "probe", fake_probe)
    out = tmp_path / action
    extra = (
        f"probe_data={world / 'data'}",
        "probe_every=1",
        "max_steps=6",
        "save_steps=1",
        "keep_last=10",
        f"guard.action={action}",
        "guard.patience=2",
        "optim.lr=0.01",
    )
    train(resolve(GRPOConfig, None, _args(world, out, *extra)))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "guard_event" in rows[-1] and "at step 3" in rows[-1]["guard_event"]
    from transformers import AutoModelForImageTextToText

    final = dict(AutoModelForImageTextToText.from_pretrained(out / "final").named_parameters())
    step1, step3 = checkpoint_weights(out, 1), checkpoint_weights(out, 3)
    assert action == "rollback" or not all(torch.equal(step1[k], step3[k]) for k in step1)
    want = step1 if action == "rollback" else step3  # rollback: step 3 saved the restored ones
    for k, v in want.items():
        assert torch.equal(final[k], v), k
