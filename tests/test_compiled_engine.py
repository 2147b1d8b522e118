"""engine=compiled: a sampling loop with a torch.compile'd decode step gives the
transformers engine's greedy tokens (text and vision-language, prefix sharing on and off,
two batch sizes) and its samples for a seed (temperature, top-k, top-p), follows in-place
weight changes, decodes eagerly when compiling fails, and trains through ``r1v2 grpo``."""

from __future__ import annotations

import pytest
import test_rollout_engines as engines
import torch
from fixtures.worlds import tiny_world
from test_rollout_engines import GREEDY, TEXTS, assert_same_rollout, vlm_items

from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.model.policy import SamplingConfig
from r1v2.rollout import CompiledEngine, RolloutEngine, TransformersEngine, build_engine
from r1v2.train.grpo import GRPOConfig, train
from r1v2.train.metrics import read_metrics

# the tiny text and vision-language policies of test_rollout_engines (module fixtures)
dirs, lm, vlm = engines.dirs, engines.lm, engines.vlm


@pytest.mark.parametrize("share_prefix", [False, True])
def test_greedy_equals_the_transformers_engine(lm, vlm, share_prefix):
    for policy, items in ((lm, TEXTS), (vlm, vlm_items())):
        engine = build_engine("compiled", policy, share_prefix=share_prefix)
        assert type(engine) is CompiledEngine and isinstance(engine, RolloutEngine)
        for group_size in (1, 3):  # two batch sizes: the compiled step serves both
            a = TransformersEngine(policy, share_prefix=share_prefix).generate(
                items, GREEDY, group_size=group_size
            )
            b = engine.generate(items, GREEDY, group_size=group_size)
            assert_same_rollout(a, b)
        assert engine.failed is None


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(max_new_tokens=12, temperature=0.8, top_p=0.9),
        SamplingConfig(max_new_tokens=12, temperature=1.3, top_k=5),
        SamplingConfig(max_new_tokens=12),
    ],
)
def test_sampling_draws_the_same_numbers(lm, sampling):
    """The same seed gives the transformers engine's samples (a near tie could tell them
    apart through float rounding; none occurs on this model), another seed others."""
    engine = CompiledEngine(lm, share_prefix=True)
    torch.manual_seed(3)
    a = TransformersEngine(lm, share_prefix=True).generate(TEXTS, sampling, group_size=4)
    torch.manual_seed(3)
    b = engine.generate(TEXTS, sampling, group_size=4)
    assert_same_rollout(a, b)
    torch.manual_seed(4)
    c = engine.generate(TEXTS, sampling, group_size=4)
    assert not torch.equal(c.completion_ids[:, :4], b.completion_ids[:, :4])


def test_weight_updates_reach_the_compiled_step(lm):
    engine = CompiledEngine(lm)
    before = engine.generate(TEXTS, GREEDY)
    head = lm.model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():  # in place, as an optimizer step or the reference swap
            head.mul_(-1.0)
        after = engine.generate(TEXTS, GREEDY)
        assert_same_rollout(TransformersEngine(lm).generate(TEXTS, GREEDY), after)
        assert not torch.equal(before.completion_ids, after.completion_ids)
    finally:
        with torch.no_grad():
            head.copy_(saved)


def test_a_failed_compile_decodes_eagerly(lm, capsys):
    engine = CompiledEngine(lm)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("cannot trace this\nsecond line")

    engine._compiled = broken
    out = engine.generate(TEXTS, GREEDY)
    assert_same_rollout(TransformersEngine(lm).generate(TEXTS, GREEDY), out)
    assert engine.failed == "RuntimeError: cannot trace this"
    err = capsys.readouterr().err
    assert err.count("warning: engine=compiled could not compile") == 1
    assert "decoding eagerly" in err
    engine.generate(TEXTS, GREEDY)
    assert calls == [1]  # tried once, never again


def test_short_completions_and_refusals(lm):
    one = CompiledEngine(lm).generate(TEXTS, SamplingConfig(max_new_tokens=1), group_size=2)
    assert one.completion_ids.shape == (6, 1)
    with pytest.raises(R1V2Error, match="engine=compiled takes no streamer"):
        lm.generate(TEXTS, GREEDY, streamer=object(), decode=CompiledEngine(lm).decode)
    lm.synced_gpus = True
    try:
        with pytest.raises(R1V2Error, match="engine=compiled cannot decode.*sharding=fsdp"):
            CompiledEngine(lm)
    finally:
        lm.synced_gpus = False


def test_grpo_trains_with_the_compiled_engine(tmp_path):
    """engine=compiled through r1v2 grpo, off the defaults (adapter and LLM train, a
    micro-batch smaller than the step): the same rollouts as engine=transformers."""
    tiny_world(tmp_path, 8)
    args = [
        f"model={tmp_path / 'vlm'}",
        f"data={tmp_path / 'data'}",
        "max_steps=2",
        "prompts_per_step=2",
        "group_size=3",
        "micro_batch_size=4",
        "trainable=llm+adapter",
        "generation.max_new_tokens=8",
        "progress=false",
        "tensorboard=false",
    ]
    rows = {}
    runs = {
        "transformers": ["engine=transformers"],
        "compiled": ["engine=compiled"],
        "static": ["engine=compiled", "static_cache=true"],  # CUDA's default, forced here
    }
    for name, extra in runs.items():
        out = tmp_path / name
        train(resolve(GRPOConfig, None, [*args, f"output_dir={out}", *extra]))
        rows[name] = [r for r in read_metrics(out) if r.get("step", 0) > 0]
    for name in ("compiled", "static"):
        assert [r["step"] for r in rows[name]] == [1, 2]
        for a, b in zip(rows["transformers"], rows[name]):
            assert a["response_length_mean"] == b["response_length_mean"]
            assert a["reward_mean"] == pytest.approx(b["reward_mean"])
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)


# ---- static KV cache (CUDA graphs on CUDA) ----------------------------------------------------


def static_engine(policy, *, compiled: bool, share_prefix: bool = False) -> CompiledEngine:
    """engine=compiled with the static cache forced on (on CUDA it is the default); eager
    when not ``compiled`` (the same code path, without torch.compile's minute)."""
    engine = CompiledEngine(policy, share_prefix=share_prefix, static_cache=True)
    if not compiled:
        engine.failed = "not compiled in this test"
    return engine


@pytest.mark.parametrize("share_prefix", [False, True])
def test_static_cache_greedy_equals_the_transformers_engine(lm, vlm, share_prefix):
    """Off the buckets' edges: 3 prompts x group sizes 1 and 3 fill 3 and 9 of 8 and 16
    rows, the cache length rounds up from prompt + 10 tokens to 64."""
    for policy, items in ((lm, TEXTS), (vlm, vlm_items())):
        engine = static_engine(policy, compiled=False, share_prefix=share_prefix)
        for group_size in (1, 3):
            a = TransformersEngine(policy, share_prefix=share_prefix).generate(
                items, GREEDY, group_size=group_size
            )
            assert_same_rollout(a, engine.generate(items, GREEDY, group_size=group_size))
        assert engine._cache[0] == (16, 64)  # the last bucket's cache, kept for the next call


def test_static_cache_samples_as_the_transformers_engine(lm):
    """The extra rows draw no random numbers: a seed gives the transformers engine's
    samples; a longer completion than the first bucket moves to the next length bucket."""
    sampling = SamplingConfig(max_new_tokens=70, temperature=0.8, top_p=0.9)
    engine = static_engine(lm, compiled=False)
    torch.manual_seed(5)
    a = TransformersEngine(lm).generate(TEXTS, sampling, group_size=2)
    torch.manual_seed(5)
    assert_same_rollout(a, engine.generate(TEXTS, sampling, group_size=2))
    assert engine._cache[0][1] >= 128


def test_static_cache_compiled_step(lm):
    """The compiled step on the static cache (mode=reduce-overhead: CUDA graphs on CUDA, a
    plain compiled graph here): the transformers engine's greedy tokens, and in-place
    weight updates reach it."""
    engine = static_engine(lm, compiled=True)
    assert_same_rollout(
        TransformersEngine(lm).generate(TEXTS, GREEDY), engine.generate(TEXTS, GREEDY)
    )
    assert engine.failed is None
    head = lm.model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.mul_(-1.0)
        after = engine.generate(TEXTS, GREEDY)
        assert_same_rollout(TransformersEngine(lm).generate(TEXTS, GREEDY), after)
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert engine.failed is None


def test_the_static_step_keeps_a_graph_per_bucket(lm):
    """Each (rows, length) bucket is a compile of the same forward: the static step raises
    torch's limit of graphs per frame (8, past which it would decode eagerly and silently)
    for its own calls only."""
    from r1v2.rollout.compiled import RECOMPILE_LIMIT, STATIC_BUCKETS

    engine = CompiledEngine(lm, static_cache=True)
    seen = []

    def step(**inputs):
        seen.append(getattr(torch._dynamo.config, RECOMPILE_LIMIT))
        return lm.model(**inputs)

    engine._compiled = step
    assert_same_rollout(
        TransformersEngine(lm).generate(TEXTS, GREEDY), engine.generate(TEXTS, GREEDY)
    )
    assert seen and set(seen) == {STATIC_BUCKETS}
    assert getattr(torch._dynamo.config, RECOMPILE_LIMIT) < STATIC_BUCKETS  # restored after
