"""The policy wrapper: prompts, shared vision features, generation and per-token log-probs."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from r1v2.errors import R1V2Error
from r1v2.model.assemble import assemble
from r1v2.model.freeze import set_trainable
from r1v2.model.policy import (
    Policy,
    PromptBatch,
    SamplingConfig,
    completion_masks,
    format_question,
    to_prompt,
)
from r1v2.rollout import RolloutEngine, TransformersEngine
from r1v2.toy.tiny import tiny_llm, tiny_vision

WORDS = "how many red blue circles are there ? 0 1 2 3 <think> </think> A B".split()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    vision = tiny_vision(root / "vision", seed=1)
    llm = tiny_llm(WORDS, root / "llm", seed=2)
    return assemble(vision, llm, root / "vlm", verbose=False), llm


@pytest.fixture
def policy(dirs):
    return Policy.from_pretrained(dirs[0])


def img(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))


def items():
    """Two prompts: one image, then two images (different prompt lengths -> left padding)."""
    return [("how many red ?", [img(0)]), ("how many blue circles are there ?", [img(1), img(2)])]


def words_only(policy, ids):
    """Sampled ids with image special tokens replaced by a word: the naive twin's
    ``input_ids`` path would take a sampled <IMG_CONTEXT> for an image slot."""
    image_ids = torch.tensor(policy.processor.image_token_ids + [policy.tokenizer.video_token_id])
    return ids.masked_fill(
        torch.isin(ids, image_ids), policy.tokenizer.convert_tokens_to_ids("red")
    )


def naive_logprobs(model, batch: PromptBatch, ids, cmask, group_size, temperature=1.0):
    """Full forward of prompt+completion per sample, with the pixels repeated per sample."""
    rows = torch.arange(ids.shape[0]) // group_size
    starts = np.cumsum([0, *batch.tiles])
    pixels = torch.cat([batch.pixel_values[starts[p] : starts[p + 1]] for p in rows.tolist()])
    input_ids = torch.cat([batch.input_ids[rows], ids], dim=1)
    mask = torch.cat([batch.attention_mask[rows], cmask], dim=1)
    logits = model(
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=mask.long(),
        position_ids=(mask.long().cumsum(1) - 1).clamp(min=0),
    ).logits
    tp = batch.input_ids.shape[1]
    logits = logits[:, tp - 1 : -1].float() / temperature  # position tp-1+t predicts token t
    logps = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(~cmask, 0.0)


def test_prompt_building_from_sample_like_objects(policy):
    sample = SimpleNamespace(
        question="how many red ?", choices=("2", "3"), open_images=lambda: [img(0)]
    )
    prompt = to_prompt(sample)
    assert prompt.text == "how many red ?\nA. 2\nB. 3" and len(prompt.images) == 1
    assert format_question("q", None) == "q"
    assert to_prompt("how many ?").images == ()
    text = policy.render(prompt)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    batch = policy.encode([sample, ("how many blue circles are there ?", [img(1), img(2)])])
    assert batch.tiles == [1, 2] and batch.pixel_values.shape == (3, 3, 32, 32)
    # Left padding: the shorter first prompt starts with pads, both end with the same suffix.
    assert not batch.attention_mask[0, 0] and batch.attention_mask[:, -1].all()
    assert batch.input_ids[0, 0] == policy.pad_id
    sub = batch.select([1])
    assert torch.equal(sub.pixel_values, batch.pixel_values[1:3]) and sub.tiles == [2]
    buffer = io.BytesIO()
    img(5).save(buffer, format="PNG")
    from_bytes = to_prompt(("q", [buffer.getvalue()]))
    assert np.array_equal(np.asarray(from_bytes.images[0]), np.asarray(img(5)))
    with pytest.raises(R1V2Error, match="cannot make a prompt"):
        to_prompt(42)


def test_vision_encoder_runs_once_per_prompt(policy):
    """2 prompts with 1 + 2 images, G = 4: the encoder sees 3 images once, not 12."""
    seen = []
    policy.model.model.vision_tower.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    batch = policy.encode(items())
    rollout = policy.generate(batch, SamplingConfig(max_new_tokens=4), group_size=4)
    assert seen == [3]
    policy.logprobs(
        batch, rollout.completion_ids, rollout.completion_mask, group_size=4, micro_batch_size=3
    )
    assert seen == [3, 3]
    assert (
        rollout.completion_ids.shape[0] == 8 and rollout.prompt_index.tolist() == [0] * 4 + [1] * 4
    )


def test_logprobs_equal_naive_forward(policy):
    torch.manual_seed(1)
    batch = policy.encode(items())
    rollout = policy.generate(batch, SamplingConfig(max_new_tokens=6), group_size=3)
    ids, cmask = words_only(policy, rollout.completion_ids), rollout.completion_mask
    with torch.no_grad():
        for temperature in (1.0, 0.7):
            got = policy.logprobs(batch, ids, cmask, group_size=3, temperature=temperature)
            want = naive_logprobs(policy.model, batch, ids, cmask, 3, temperature)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            micro = policy.logprobs(
                batch, ids, cmask, group_size=3, micro_batch_size=2, temperature=temperature
            )
            torch.testing.assert_close(micro, got, rtol=1e-5, atol=1e-5)
    assert (got[~cmask] == 0).all() and (got[cmask] < 0).all()


def test_adapter_gradients_flow_through_shared_features(policy):
    """Adapter-only training: the gradient of sum(log-probs) through the once-computed image
    features equals the gradient of the naive per-sample forward."""
    set_trainable(policy.model, "adapter")
    batch = policy.encode(items())
    torch.manual_seed(2)
    rollout = policy.generate(batch, SamplingConfig(max_new_tokens=5), group_size=2)
    ids, cmask = words_only(policy, rollout.completion_ids), rollout.completion_mask
    adapter = list(policy.model.model.multi_modal_projector.parameters())
    policy.logprobs(batch, ids, cmask, group_size=2, micro_batch_size=3).sum().backward()
    got = [p.grad.clone() for p in adapter]
    policy.model.zero_grad()
    naive_logprobs(policy.model, batch, ids, cmask, 2).sum().backward()
    for g, p in zip(got, adapter):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in policy.model.model.vision_tower.parameters())


def test_logprobs_do_not_depend_on_the_rest_of_the_batch(policy):
    """A sequence scored alone == scored next to a longer prompt and a longer completion."""
    alone = policy.encode(items()[:1])
    both = policy.encode([items()[1], items()[0]])
    assert (
        both.input_ids.shape[1] > alone.input_ids.shape[1]
    )  # alone's prompt is left-padded in both
    ids = torch.tensor([[5, 9, 3, 0, 0], [7, 8, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        single = policy.logprobs(alone, ids[:1, :3], mask[:1, :3])
        paired = policy.logprobs(both, ids[[1, 0]], mask[[1, 0]])
    torch.testing.assert_close(paired[1, :3], single[0], rtol=1e-5, atol=1e-5)
    assert (paired[1, 3:] == 0).all()


def test_greedy_generation_matches_plain_generate(policy):
    batch = policy.encode(items())
    greedy = SamplingConfig(max_new_tokens=6, do_sample=False)
    rollout = policy.generate(batch, greedy, group_size=2)
    chunked = policy.generate(batch, greedy, group_size=2, batch_size=3)
    assert torch.equal(rollout.completion_ids, chunked.completion_ids)
    for p in range(2):
        one = batch.select([p])
        plain = policy.model.generate(
            input_ids=one.input_ids,
            attention_mask=one.attention_mask.long(),
            pixel_values=one.pixel_values,
            max_new_tokens=6,
            do_sample=False,
        )[0, one.input_ids.shape[1] :]
        n = int(rollout.completion_mask[2 * p].sum())
        assert rollout.completion_ids[2 * p, :n].tolist() == plain[:n].tolist()
        assert torch.equal(rollout.completion_ids[2 * p], rollout.completion_ids[2 * p + 1])
    assert rollout.completion_ids.shape[1] <= 6
    assert rollout.texts[0] == policy.tokenizer.decode(
        rollout.completion_ids[0][rollout.completion_mask[0]], skip_special_tokens=True
    )


def test_completion_masks_hand_computed():
    """EOS = 3: [5, 3, 0, 0] -> mask 1 1 0 0 (EOS counts), finished; [5, 6, 7, 8] -> all 1,
    unfinished; [3, 3, 9, 0] -> only the first EOS counts: 1 0 0 0."""
    ids = torch.tensor([[5, 3, 0, 0], [5, 6, 7, 8], [3, 3, 9, 0]])
    mask, finished = completion_masks(ids, [3])
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_text_only_policy_with_a_plain_causal_lm(dirs):
    policy = Policy.from_pretrained(dirs[1])
    assert not policy.is_vlm
    batch = policy.encode(["how many red ?", "how many blue circles are there ?"])
    assert batch.pixel_values is None and batch.tiles == [0, 0]
    torch.manual_seed(0)
    rollout = policy.generate(batch, SamplingConfig(max_new_tokens=5), group_size=2)
    ids, cmask = rollout.completion_ids, rollout.completion_mask
    with torch.no_grad():
        got = policy.logprobs(batch, ids, cmask, group_size=2)
        rows = torch.arange(4) // 2
        mask = torch.cat([batch.attention_mask[rows], cmask], dim=1)
        logits = policy.model(
            input_ids=torch.cat([batch.input_ids[rows], ids], dim=1),
            attention_mask=mask.long(),
            position_ids=(mask.long().cumsum(1) - 1).clamp(min=0),
        ).logits[:, batch.input_ids.shape[1] - 1 : -1]
        want = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, want.masked_fill(~cmask, 0.0), rtol=1e-5, atol=1e-5)
    with pytest.raises(R1V2Error, match="cannot take images"):
        policy.encode([("how many ?", [img(0)])])


def test_sampling_config_and_sizes_are_checked(policy):
    batch = policy.encode(items())
    with pytest.raises(R1V2Error, match="temperature"):
        policy.generate(batch, SamplingConfig(temperature=0.0))
    with pytest.raises(R1V2Error, match="3 completions for 2 prompts x group size 2"):
        policy.logprobs(
            batch, torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2).bool(), group_size=2
        )


def test_transformers_engine(policy):
    """The engine samples what the policy samples (same seed, same chunks), with every module in
    eval mode while it generates (no dropout), and puts training mode back afterwards."""
    engine = TransformersEngine(policy, batch_size=2)
    assert isinstance(engine, RolloutEngine)
    modes = []
    for module in (policy.model.model.vision_tower, policy.model.model.language_model):
        module.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    sampling = SamplingConfig(max_new_tokens=3)
    policy.model.train()
    torch.manual_seed(3)
    rollout = engine.generate(items(), sampling, group_size=2)
    assert policy.model.training  # restored
    assert modes and not any(modes)
    policy.model.eval()
    torch.manual_seed(3)
    direct = policy.generate(items(), sampling, group_size=2, batch_size=2)
    assert torch.equal(rollout.completion_ids, direct.completion_ids)
    assert torch.equal(rollout.completion_mask, direct.completion_mask)
    assert rollout.texts == direct.texts and len(rollout.texts) == 4
    engine.sync_weights()
