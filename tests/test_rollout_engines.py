"""Rollout engines: continuous batching against transformers ``generate`` on tiny models
(greedy outputs identical, sampled ones well formed), and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.worlds import tiny_world
from PIL import Image

from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.model.assemble import assemble
from r1v2.model.policy import Policy, SamplingConfig
from r1v2.rollout import (
    ENGINES,
    CompiledEngine,
    ContinuousBatchingEngine,
    RolloutEngine,
    TransformersEngine,
    build_engine,
    continuous,
)
from r1v2.toy.tiny import tiny_llm, tiny_vision
from r1v2.train.grpo import GRPOConfig, train
from r1v2.train.metrics import read_metrics

WORDS = "how many red blue circles are there ? 0 1 2 3 <think> </think> A B".split()
GREEDY = SamplingConfig(max_new_tokens=10, do_sample=False)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    vision = tiny_vision(root / "vision", seed=1)
    llm = tiny_llm(WORDS, root / "llm", num_layers=2, seed=2)
    return assemble(vision, llm, root / "vlm", verbose=False), llm


@pytest.fixture(scope="module")
def vlm(dirs):
    return Policy.from_pretrained(dirs[0])


@pytest.fixture(scope="module")
def lm(dirs):
    return Policy.from_pretrained(dirs[1])


def img(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))


def vlm_items(first_image=0):
    """Three prompts of different lengths (1, 2 and 0 images; left padding)."""
    return [
        ("how many blue ?", [img(first_image)]),
        ("how many blue circles are there ?", [img(1), img(2)]),
        "how many circles ?",
    ]


TEXTS = ["how many red ?", "how many blue circles are there ?", "3 A B"]


def assert_same_rollout(a, b):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.finished, b.finished)
    assert a.texts == b.texts
    assert a.group_size == b.group_size
    assert torch.equal(a.prompts.input_ids, b.prompts.input_ids)


# ---- greedy: the same tokens as generate -------------------------------------------------------


@pytest.mark.parametrize("group_size", [1, 3])
def test_greedy_text_only_equals_transformers_engine(lm, group_size):
    a = TransformersEngine(lm).generate(TEXTS, GREEDY, group_size=group_size)
    b = ContinuousBatchingEngine(lm).generate(TEXTS, GREEDY, group_size=group_size)
    assert_same_rollout(a, b)
    assert a.completion_ids.shape[0] == 3 * group_size


def test_greedy_vision_language_equals_transformers_engine(vlm):
    """The image features reach the model: another first image changes the first prompt's
    completion in both engines alike, and the model is left as it was found."""
    embedding = vlm.model.get_input_embeddings()
    attn = vlm.model.config._attn_implementation
    vlm.model.train()
    cb = ContinuousBatchingEngine(vlm)
    for first in (0, 7):
        a = TransformersEngine(vlm).generate(vlm_items(first), GREEDY, group_size=2)
        b = cb.generate(vlm_items(first), GREEDY, group_size=2)
        assert_same_rollout(a, b)
        if first == 0:
            before = b.completion_ids
    assert not torch.equal(before[0], b.completion_ids[0])  # the image mattered
    assert torch.equal(before[2:], b.completion_ids[2:])  # the other prompts did not change
    assert vlm.model.get_input_embeddings() is embedding
    assert vlm.model.config._attn_implementation == attn
    assert vlm.model.training
    vlm.model.eval()


def test_top_k_one_samples_the_greedy_tokens(vlm):
    """The sampling settings reach the manager's logits processors: top_k=1 leaves one token."""
    greedy = ContinuousBatchingEngine(vlm).generate(vlm_items(), GREEDY, group_size=2)
    top1 = SamplingConfig(max_new_tokens=10, temperature=1.5, top_k=1)
    sampled = ContinuousBatchingEngine(vlm).generate(vlm_items(), top1, group_size=2)
    assert_same_rollout(greedy, sampled)


# ---- sampling: shapes, EOS, max_new_tokens, groups, seeds --------------------------------------


@pytest.mark.parametrize("which", ["lm", "vlm"])
def test_sampled_rollouts_are_well_formed(which, lm, vlm):
    policy, items = (lm, TEXTS) if which == "lm" else (vlm, vlm_items())
    engine = ContinuousBatchingEngine(policy)
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.3)
    torch.manual_seed(4)
    out = engine.generate(items, sampling, group_size=4)
    ids, mask = out.completion_ids, out.completion_mask
    n = 3 * 4
    assert ids.shape[0] == mask.shape[0] == out.finished.shape[0] == len(out.texts) == n
    assert ids.shape[1] <= sampling.max_new_tokens
    assert out.prompt_index.tolist() == [p for p in range(3) for _ in range(4)]
    lengths = mask.sum(dim=1)
    assert int(lengths.max()) == ids.shape[1]  # trimmed to the longest completion
    eos = torch.tensor(policy.eos_ids)
    for i in range(n):
        row = ids[i, : lengths[i]]
        assert mask[i, : lengths[i]].all() and not mask[i, lengths[i] :].any()
        assert (ids[i, lengths[i] :] == policy.pad_id).all()
        ends = torch.isin(row, eos)
        if out.finished[i]:  # stops at its first EOS, which counts
            assert ends[-1] and not ends[:-1].any()
        else:  # ran to max_new_tokens without an EOS
            assert lengths[i] == sampling.max_new_tokens and not ends.any()
        assert out.texts[i] == policy.tokenizer.decode(row, skip_special_tokens=True)
    assert out.finished.any() and not out.finished.all()  # both cases were seen
    for p in range(3):  # the samples of a group differ: sampling did happen
        group = [ids[4 * p + g].tolist() for g in range(4)]
        assert len({tuple(g) for g in group}) > 1
    torch.manual_seed(4)
    again = engine.generate(items, sampling, group_size=4)
    assert_same_rollout(out, again)  # same seed, same samples
    torch.manual_seed(5)
    other = engine.generate(items, sampling, group_size=4)
    assert not torch.equal(other.completion_ids[:, :3], ids[:, :3])  # another seed, others


def test_max_new_tokens_and_ignore_eos(vlm):
    short = SamplingConfig(max_new_tokens=3)
    out = ContinuousBatchingEngine(vlm).generate(vlm_items(), short, group_size=2)
    assert out.completion_ids.shape[1] <= 3 and out.completion_mask.sum(dim=1).max() <= 3
    full = ContinuousBatchingEngine(vlm, ignore_eos=True).generate(
        vlm_items(), SamplingConfig(max_new_tokens=20), group_size=2
    )
    assert full.completion_ids.shape == (6, 20)
    assert full.completion_mask.all() and not full.finished.any()


# ---- the interface, the config field, refusals --------------------------------------------------


def test_engines_follow_the_protocol_and_build_by_name(lm):
    assert ENGINES == ("transformers", "compiled", "continuous", "vllm")
    local = (TransformersEngine, CompiledEngine, ContinuousBatchingEngine)
    for name, cls in zip(ENGINES, local):
        engine = build_engine(name, lm, share_prefix=True)
        assert type(engine) is cls and isinstance(engine, RolloutEngine)
        engine.sync_weights()  # shares the policy's modules: nothing to do
    assert build_engine("transformers", lm, share_prefix=True).share_prefix
    assert build_engine("compiled", lm, share_prefix=True).share_prefix
    with pytest.raises(R1V2Error, match="unknown rollout engine 'sglang'.*transformers, compiled"):
        build_engine("sglang", lm)


def test_refusals(lm, vlm, monkeypatch):
    engine = ContinuousBatchingEngine(lm)
    with pytest.raises(R1V2Error, match="group_size must be >= 1"):
        engine.generate(TEXTS, GREEDY, group_size=0)
    lm.synced_gpus = True  # as r1v2 grpo sets it under sharding=fsdp
    try:
        with pytest.raises(R1V2Error, match="sharded across processes.*engine=transformers"):
            engine.generate(TEXTS, GREEDY)
        with pytest.raises(R1V2Error, match="sharded across processes"):
            ContinuousBatchingEngine(lm)
    finally:
        lm.synced_gpus = False

    monkeypatch.setattr(continuous, "transformers_version", lambda: "5.16.2")
    with pytest.raises(R1V2Error, match="needs transformers >= 5.17.*found 5.16.2"):
        ContinuousBatchingEngine(lm)
    monkeypatch.undo()

    class Plain(torch.nn.Module):  # a model without transformers' continuous batching
        pass

    no_cb = Policy.__new__(Policy)
    no_cb.model = Plain()
    with pytest.raises(R1V2Error, match="no continuous batching for Plain.*engine=transformers"):
        ContinuousBatchingEngine(no_cb)

    # images only where the image path is tested (InternVL); text prompts still pass
    monkeypatch.setattr(vlm.model.config, "model_type", "qwen2_vl")
    with pytest.raises(R1V2Error, match="images only for internvl models, not qwen2_vl"):
        ContinuousBatchingEngine(vlm).generate(vlm_items(), GREEDY)
    assert ContinuousBatchingEngine(vlm).generate(TEXTS, GREEDY).completion_ids.shape[0] == 3


def test_grpo_trains_with_the_continuous_engine(tmp_path):
    """engine=continuous through r1v2 grpo: steps run and log; a bad name is refused."""
    tiny_world(tmp_path, 8)
    args = [
        f"model={tmp_path / 'vlm'}",
        f"data={tmp_path / 'data'}",
        f"output_dir={tmp_path / 'out'}",
        "max_steps=2",
        "prompts_per_step=2",
        "group_size=3",
        "generation.max_new_tokens=8",
        "progress=false",
        "tensorboard=false",
    ]
    with pytest.raises(R1V2Error, match="engine"):
        resolve(GRPOConfig, None, [*args, "engine=sglang"])
    cfg = resolve(GRPOConfig, None, [*args, "engine=continuous"])
    assert resolve(GRPOConfig, None, args).engine == "transformers"  # the default
    train(cfg)
    rows = [r for r in read_metrics(tmp_path / "out") if r.get("step", 0) > 0]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["response_length_mean"] > 0 for r in rows)


@pytest.mark.parametrize("free_gib, fits", [(80.0, True), (0.5, False)])
def test_cache_is_sized_for_the_call(monkeypatch, free_gib, fits):
    """A Qwen2.5-1.5B-shaped LLM (28 layers, 2 KV heads of 128, bf16: 28 KiB of K and V per
    token), 64 sequences of at most 840 tokens in pages of 256: 64 x (4 + 1) = 320 pages =
    81,920 tokens = 2.19 GiB, + the sdpa mask 2,624 x (81,920 + 2,624) x 2 B = 0.41 GiB. With
    80 GiB free it fits in 40%: the cache is sized so. With 0.5 GiB it does not: transformers
    sizes it within 40% of the free memory instead."""
    from types import SimpleNamespace

    from transformers import Qwen2Config
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    text = Qwen2Config(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
    )
    model = SimpleNamespace(
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        config=SimpleNamespace(get_text_config=lambda: text),
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(free_gib * 2**30), 0))
    cb = ContinuousBatchingConfig()
    continuous._size_cache(cb, model, sequences=64, longest=840, prompt_tokens=2624)
    assert cb.max_batch_tokens == 2624
    if fits:
        assert cb.num_blocks == 320 and cb.max_memory_percent is None
    else:
        assert cb.num_blocks is None and cb.max_memory_percent == continuous.CACHE_MEMORY_SHARE
