"""Prefix sharing: each prompt runs through the LLM once for its G samples (generation and
log-probs), with the same samples, log-probs and gradients as every sample carrying its own
copy of the prompt; and the timing metrics every GRPO run logs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.worlds import tiny_world
from PIL import Image

from r1v2.config import resolve
from r1v2.model.assemble import assemble
from r1v2.model.freeze import set_trainable
from r1v2.model.policy import Policy, SamplingConfig
from r1v2.rollout import TransformersEngine
from r1v2.toy.tiny import tiny_llm, tiny_vision
from r1v2.train.grpo import GRPOConfig, timing_metrics, train
from r1v2.train.metrics import read_metrics

WORDS = "how many red blue circles are there ? 0 1 2 3 <think> </think> A B".split()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    vision = tiny_vision(root / "vision", seed=1)
    llm = tiny_llm(WORDS, root / "llm", num_layers=2, seed=2)
    return assemble(vision, llm, root / "vlm", verbose=False), llm


@pytest.fixture
def policy(dirs):
    return Policy.from_pretrained(dirs[0])


def img(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))


def items():
    """Three prompts of different lengths (1, 2 and 0 images; left padding)."""
    return [
        ("how many red ?", [img(0)]),
        ("how many blue circles are there ?", [img(1), img(2)]),
        "how many circles ?",
    ]


def lm_batches(policy):
    """Records (batch, length) of every language-model forward."""
    seen = []
    policy.model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])),
        with_kwargs=True,
    )
    return seen


# ---- generation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group_size, batch_size, sampling",
    [
        (4, None, {}),
        (3, 4, {"temperature": 0.7}),  # chunks of 4 split the groups of 3
        (1, None, {"temperature": 1.3}),  # nothing to share: the plain path
        (2, None, {"top_k": 5, "top_p": 0.9}),
    ],
)
def test_shared_generation_draws_the_same_samples(policy, group_size, batch_size, sampling):
    """Same seed, same tokens: the prefill of Tp - 1 tokens per prompt consumes no random
    draws, and the first sampled token comes from the same last-position logits."""
    kw = dict(group_size=group_size, batch_size=batch_size)
    s = SamplingConfig(max_new_tokens=10, **sampling)
    batch = policy.encode(items())
    torch.manual_seed(5)
    plain = policy.generate(batch, s, **kw)
    torch.manual_seed(5)
    shared = policy.generate(batch, s, **kw, share_prefix=True)
    assert torch.equal(plain.completion_ids, shared.completion_ids)
    assert torch.equal(plain.completion_mask, shared.completion_mask)
    assert plain.texts == shared.texts
    if group_size > 1:  # the groups' samples differ: sampling did happen
        assert not all(
            torch.equal(plain.completion_ids[0], plain.completion_ids[i]) for i in range(group_size)
        )


def test_shared_generation_prefills_each_prompt_once(policy):
    """3 prompts x G = 4 in one call: the LLM's first forward is 3 prompts of Tp - 1 tokens,
    the next one 12 sequences of 1 token (each one's last prompt token), then decoding."""
    seen = lm_batches(policy)
    batch = policy.encode(items())
    tp = batch.input_ids.shape[1]
    policy.generate(batch, SamplingConfig(max_new_tokens=3), group_size=4, share_prefix=True)
    assert seen[:3] == [(3, tp - 1), (12, 1), (12, 1)]
    seen.clear()
    policy.generate(batch, SamplingConfig(max_new_tokens=3), group_size=4)
    assert seen[0] == (12, tp)  # the plain path prefills every copy


def test_shared_greedy_generation_through_the_engine_is_identical(policy):
    assert not TransformersEngine(policy).share_prefix  # off unless asked (GRPO asks)
    seen = lm_batches(policy)
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    a = TransformersEngine(policy, share_prefix=True).generate(items(), greedy, group_size=3)
    assert seen[0][0] == 3  # one prefill per prompt
    b = TransformersEngine(policy).generate(items(), greedy, group_size=3)
    assert torch.equal(a.completion_ids, b.completion_ids)
    for p in range(3):  # greedy: the G copies of a prompt agree
        assert all(
            torch.equal(a.completion_ids[3 * p], a.completion_ids[3 * p + i]) for i in (1, 2)
        )


def test_text_only_policy_shares_too(dirs):
    policy = Policy.from_pretrained(dirs[1])
    texts = ["how many red ?", "how many blue circles are there ?"]
    outs = []
    for share in (False, True):
        torch.manual_seed(3)
        outs.append(
            policy.generate(
                texts, SamplingConfig(max_new_tokens=6), group_size=3, share_prefix=share
            )
        )
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)
    batch = policy.encode(texts)
    ids, cmask = outs[0].completion_ids, outs[0].completion_mask
    with torch.no_grad():
        plain = policy.logprobs(batch, ids, cmask, group_size=3, temperature=0.8)
        shared = policy.logprobs(
            batch, ids, cmask, group_size=3, temperature=0.8, share_prefix=True
        )
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)


# ---- log-probs and gradients -------------------------------------------------------------------


def rollout(policy, group_size=3, max_new_tokens=7):
    batch = policy.encode(items())
    torch.manual_seed(11)
    out = policy.generate(
        batch, SamplingConfig(max_new_tokens=max_new_tokens), group_size=group_size
    )
    assert out.completion_mask.sum(dim=1).unique().numel() > 1  # ragged completions
    return batch, out.completion_ids, out.completion_mask


@pytest.mark.parametrize("micro_batch_size", [None, 1, 2, 4, 9])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_logprobs_equal_plain(policy, micro_batch_size, temperature):
    """Micro-batches of 2 and 4 split the groups of 3 (each part shares its own prompt
    forward), 1 leaves nothing to share; within 1e-5 of the plain path in fp32."""
    batch, ids, cmask = rollout(policy)
    kw = dict(group_size=3, micro_batch_size=micro_batch_size, temperature=temperature)
    with torch.no_grad():
        plain = policy.logprobs(batch, ids, cmask, **kw)
        shared = policy.logprobs(batch, ids, cmask, **kw, share_prefix=True)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    assert (shared[~cmask] == 0).all() and (shared[cmask] < 0).all()


def test_shared_logprobs_with_a_prompt_index_and_edge_lengths(policy):
    """Replay-style batches: prompts in any order, a prompt with one completion next to one
    with three (G = 1 inside a shared micro-batch), completions of 1 and 0 tokens."""
    batch, ids, cmask = rollout(policy)
    index = torch.tensor([2, 0, 2, 1, 2, 0])
    ids, cmask = ids[[6, 0, 7, 3, 8, 1]], cmask[[6, 0, 7, 3, 8, 1]]
    with torch.no_grad():
        plain = policy.logprobs(batch, ids, cmask, prompt_index=index)
        shared = policy.logprobs(batch, ids, cmask, prompt_index=index, share_prefix=True)
        torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
        one = policy.logprobs(
            batch, ids[:, :1], cmask[:, :1], prompt_index=index, share_prefix=True
        )
        torch.testing.assert_close(one, plain[:, :1], rtol=0, atol=1e-5)
        none = policy.logprobs(
            batch, ids[:, :0], cmask[:, :0], prompt_index=index, share_prefix=True
        )
        assert none.shape == (6, 0)


def test_shared_scoring_runs_each_prompt_once_per_micro_batch(policy):
    """3 prompts x G = 3, micro-batches of 6: prompt forwards of 2 and 1 distinct prompts,
    each followed by its completions against the expanded cache; the vision encoder runs
    on only the images of the prompts a call scores. A sharded policy (every process must
    make the same forward calls) shares even where no prompt repeats and keeps the batch's
    images."""
    batch, ids, cmask = rollout(policy)
    tp, tc = batch.input_ids.shape[1], ids.shape[1]
    seen = lm_batches(policy)
    with torch.no_grad():
        policy.logprobs(batch, ids, cmask, group_size=3, micro_batch_size=6, share_prefix=True)
    assert seen == [(2, tp), (6, tc), (1, tp), (3, tc)]
    tiles = []
    policy.model.model.vision_tower.register_forward_hook(
        lambda module, args, kwargs, out: tiles.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    index = torch.tensor([0, 0, 2])  # only prompt 0 has images among these: 1 tile
    with torch.no_grad():
        policy.logprobs(batch, ids[:3], cmask[:3], prompt_index=index, share_prefix=True)
    assert tiles == [1]
    seen.clear()
    policy.synced_gpus = True
    index = torch.tensor([0, 2])
    with torch.no_grad():
        got = policy.logprobs(batch, ids[:2], cmask[:2], prompt_index=index, share_prefix=True)
        policy.synced_gpus = False
        want = policy.logprobs(batch, ids[:2], cmask[:2], prompt_index=index)
    assert seen[:2] == [(2, tp), (2, tc)] and tiles[1:] == [3, 1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def grads(policy, params, batch, ids, cmask, weights, **kw):
    policy.model.zero_grad(set_to_none=True)
    logps = policy.logprobs(batch, ids, cmask, group_size=3, **kw)
    (logps * weights).sum().backward()
    return logps.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("trainable", ["adapter", "all"])
@pytest.mark.parametrize("micro_batch_size, temperature", [(None, 1.0), (4, 0.7), (2, 1.0)])
def test_shared_gradients_equal_plain(policy, trainable, micro_batch_size, temperature):
    """The gradient of a weighted sum of log-probs, adapter-only (it reaches the adapter only
    through the prompt's image tokens, i.e. through the shared prompt forward and its
    expanded cache) and for every weight: equal to the plain path within 1e-5 of its
    largest entry."""
    set_trainable(policy.model, trainable)
    policy.model.train()  # no dropout in these models; train mode as in the update
    batch, ids, cmask = rollout(policy)
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(4))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    kw = dict(micro_batch_size=micro_batch_size, temperature=temperature)
    lp_plain, g_plain = grads(policy, params, batch, ids, cmask, weights, **kw)
    lp_shared, g_shared = grads(policy, params, batch, ids, cmask, weights, **kw, share_prefix=True)
    torch.testing.assert_close(lp_shared, lp_plain, rtol=0, atol=1e-5)
    scale = max(float(g.abs().max()) for g in g_plain)
    assert scale > 0
    for (name, _), a, b in zip(
        [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad], g_shared, g_plain
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale, msg=name)
    if trainable == "adapter":
        assert all(p.grad is None for p in policy.model.model.vision_tower.parameters())


# ---- the trainer ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_prefix")
    tiny_world(root, 16)
    return root


def _train(world, out, *extra):
    args = [
        f"model={world / 'vlm'}",
        f"data={world / 'data'}",
        f"output_dir={out}",
        "max_steps=2",
        "save_steps=2",
        "prompts_per_step=4",
        "group_size=4",
        "micro_batch_size=6",  # splits groups
        "generation.max_new_tokens=10",
        "kl_coef=0.01",
        "progress=false",
        "tensorboard=false",
        *extra,
    ]
    train(resolve(GRPOConfig, None, args))
    return read_metrics(out / "metrics.jsonl")


def test_grpo_with_and_without_prefix_sharing_and_its_timing_metrics(world, tmp_path):
    """Two steps with share_prefix on (the default) and off: the same rollouts, metrics and
    trained weights; every step logs where its time went."""
    from safetensors.torch import load_file

    assert GRPOConfig().share_prefix
    on = _train(world, tmp_path / "on")
    off = _train(world, tmp_path / "off", "share_prefix=false")
    for a, b in zip(on, off):
        for key in ("reward_mean", "response_length_mean", "replayed", "effective_ratio"):
            assert a[key] == b[key], key
        for key in ("loss", "kl", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-8), key
    w_on = load_file(str(tmp_path / "on" / "checkpoint-00000002" / "trainable.safetensors"))
    w_off = load_file(str(tmp_path / "off" / "checkpoint-00000002" / "trainable.safetensors"))
    for k in w_on:
        torch.testing.assert_close(w_on[k], w_off[k], rtol=0, atol=1e-6)
    for r in on:
        assert 0 < r["generation_seconds"] < r["step_seconds"]
        assert 0 < r["reward_seconds"] < r["step_seconds"] - r["generation_seconds"]
        assert r["generation_share"] == pytest.approx(r["generation_seconds"] / r["step_seconds"])
        assert r["reward_share"] == pytest.approx(r["reward_seconds"] / r["step_seconds"])
        generated = r["response_length_mean"] * r["rollouts"]
        assert r["generated_tokens_per_second"] == pytest.approx(
            generated / r["generation_seconds"]
        )
        # prompt tokens: each of the 4 prompts counted once per sample (G = 4), no padding
        prompt_tokens = r["tokens_per_second"] * r["step_seconds"] - generated
        assert prompt_tokens == pytest.approx(round(prompt_tokens), abs=1e-6)
        assert round(prompt_tokens) % 4 == 0 and round(prompt_tokens) >= 4 * 4 * 20
        assert "rollout_tokens" not in r


def test_timing_metrics_hand_computed():
    """2 s step, 0.5 s of it generating; 300 rollout tokens -> 150 tokens/s, share 0.25."""
    m = timing_metrics({"generation_seconds": 0.5, "rollout_tokens": 300.0, "kl": 0.1}, 2.0)
    assert m == {
        "generation_seconds": 0.5,
        "kl": 0.1,
        "step_seconds": 2.0,
        "generation_share": 0.25,
        "tokens_per_second": 150.0,
    }
    # with the reward's time (0.1 s of the 2): its share beside generation's
    m = timing_metrics(
        {"generation_seconds": 0.5, "reward_seconds": 0.1, "rollout_tokens": 300.0}, 2.0
    )
    assert (m["generation_share"], m["reward_share"]) == (0.25, 0.05)
