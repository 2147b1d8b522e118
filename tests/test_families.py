"""Every supported vision-language family, on tiny random checkpoints built offline: r1v2's
log-probs equal transformers' own forward, greedy generation equals ``model.generate``, a
GRPO step's gradient equals the naive twin's, and ``trainable`` names each family's parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from r1v2.algos.grpo import policy_loss
from r1v2.errors import R1V2Error
from r1v2.model.families import FAMILIES, family_of
from r1v2.model.freeze import set_trainable
from r1v2.model.policy import Policy, Prompt, SamplingConfig
from r1v2.rollout.compiled import CompiledEngine
from r1v2.rollout.engine import TransformersEngine
from r1v2.toy.families import BUILDERS, build_family, reference_greedy, reference_logprobs

NAMES = list(BUILDERS)
G = 2
# Each family's adapter, by parameter-name fragment (and nothing of the vision encoder).
ADAPTER = {
    "internvl": ("multi_modal_projector",),
    "qwen2_vl": ("visual.merger",),
    "qwen2_5_vl": ("visual.merger",),
    "qwen3_vl": ("visual.merger", "visual.deepstack_merger_list"),
    "llava": ("multi_modal_projector",),
    "llava_onevision": ("multi_modal_projector", "image_newline"),
    "idefics3": ("connector",),
    "smolvlm": ("connector",),
    "gemma3": ("multi_modal_projector",),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = build_family(name, root / name)
        return built[name]

    return get


def load(checkpoints, name: str) -> Policy:
    policy = Policy.from_pretrained(checkpoints(name))
    policy.model.float()
    return policy


def image(seed: int, height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def prompts() -> list[Prompt]:
    """One image, text only, and two images of different sizes: left padding in every batch."""
    return [
        Prompt("how many shapes ?", (image(0, 32, 48),)),
        Prompt("what is the answer ?"),
        Prompt("how many red circles are there ?", (image(1, 40, 32), image(2, 64, 48))),
    ]


def completions(policy: Policy, n: int, length: int = 7):
    """Random word completions ``[n, length]`` and a mask with rows of different lengths."""
    words = "the answer is red blue one two three".split()
    ids = torch.tensor(policy.tokenizer.convert_tokens_to_ids(words))
    gen = torch.Generator().manual_seed(n)
    tokens = ids[torch.randint(0, len(ids), (n, length), generator=gen)]
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    lengths[0] = length
    return tokens, torch.arange(length)[None] < lengths[:, None]


@pytest.mark.parametrize("name", NAMES)
def test_logprobs_equal_transformers_forward(checkpoints, name):
    """Batched with left padding, a text-only prompt mixed in, two image sizes, micro-batches
    of 4 across prompt groups, prefix sharing on and off, temperature 1 and 0.7: every
    per-token log-prob within 1e-5 of the model's own forward of that sample alone."""
    policy = load(checkpoints, name)
    items = prompts()
    batch = policy.encode(items)
    ids, cmask = completions(policy, len(items) * G)
    with torch.no_grad():
        for temperature in (1.0, 0.7):
            want = reference_logprobs(policy, items, ids, cmask, G, temperature)
            for share in (False, True):
                got = policy.logprobs(
                    batch,
                    ids,
                    cmask,
                    group_size=G,
                    micro_batch_size=4,
                    share_prefix=share,
                    temperature=temperature,
                )
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, break_it",
    [
        ("qwen2_5_vl", lambda f, m: m.setattr(f, "positions", lambda *a: None)),
        ("qwen3_vl", lambda f, m: m.setattr(f, "deepstack_target", lambda model: None)),
        ("gemma3", lambda f, m: m.setattr(f, "forward_token_keys", ())),
    ],
)
def test_the_exactness_check_catches_a_missing_family_input(
    checkpoints, name, break_it, monkeypatch
):
    """Without M-RoPE positions, deepstack features or Gemma's bidirectional image mask the
    log-probs leave transformers' by several times the 1e-5 the test above allows."""
    policy = load(checkpoints, name)
    break_it(policy.family, monkeypatch)
    items = prompts()
    ids, cmask = completions(policy, len(items) * G)
    with torch.no_grad():
        got = policy.logprobs(policy.encode(items), ids, cmask, group_size=G)
        want = reference_logprobs(policy, items, ids, cmask, G)
    assert (got - want).abs().max() > 5e-5  # at least 5x the tolerance above


def kept(rollout) -> list[list[int]]:
    return [r[m].tolist() for r, m in zip(rollout.completion_ids, rollout.completion_mask)]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_equals_model_generate(checkpoints, name):
    """engine=transformers and engine=compiled's decode loop on its dynamic and its static
    KV cache (eagerly: compiling every family is the slow test below), prefix sharing on and
    off: each prompt's greedy completion is ``model.generate``'s of that prompt alone."""
    policy = load(checkpoints, name)
    items = prompts()
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    want = reference_greedy(policy, items, 8)
    for share in (False, True):
        caches = (False,) if name == "gemma3" else (False, True)  # static: no sliding window
        compiled = [CompiledEngine(policy, share_prefix=share, static_cache=c) for c in caches]
        for engine in compiled:
            engine.failed = "eager in this test"
        for engine in (TransformersEngine(policy, share_prefix=share), *compiled):
            got = kept(engine.generate(items, greedy, group_size=G))
            assert got[::G] == [w[: len(g)] for w, g in zip(want, got[::G])]
            assert got[::G] == got[1::G]
            assert all(len(g) == 8 or g[-1] in policy.eos_ids for g in got)


def test_the_static_cache_refuses_sliding_window_attention(checkpoints):
    """Gemma 3's sliding-window layers: the static cache is off by default (on CUDA too) and
    refused in one line when asked for."""
    policy = load(checkpoints, "gemma3")
    assert CompiledEngine(policy).static_cache is False
    with pytest.raises(R1V2Error, match="static_cache does not serve .*sliding-window"):
        CompiledEngine(policy, static_cache=True)
    assert CompiledEngine(load(checkpoints, "qwen2_5_vl"), static_cache=True).static_cache


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen3_vl", "gemma3"])
def test_compiled_engine_samples_as_transformers(checkpoints, name):
    """The compiled decode step (torch.compile) on M-RoPE + deepstack and on Gemma 3's
    sliding-window attention: greedy outputs and seeded samples equal engine=transformers'."""
    policy = load(checkpoints, name)
    items = prompts()
    compiled = CompiledEngine(policy, share_prefix=True)
    plain = TransformersEngine(policy, share_prefix=True)
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    assert kept(compiled.generate(items, greedy, group_size=G)) == kept(
        plain.generate(items, greedy, group_size=G)
    )
    assert compiled.failed is None
    warm = SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=20)
    torch.manual_seed(3)
    a = compiled.generate(items, warm, group_size=G)
    torch.manual_seed(3)
    b = plain.generate(items, warm, group_size=G)
    assert torch.equal(a.completion_ids, b.completion_ids)


@pytest.mark.parametrize("name", NAMES)
def test_grpo_gradient_equals_naive_twin(checkpoints, name):
    """One GRPO loss (clipped surrogate, k3 KL to a fixed reference) on log-probs from the
    policy (prefix sharing, micro-batches of 3) and from the naive per-sample forward: the
    same loss and, for every parameter of vision, adapter and LLM, the same gradient."""
    policy = load(checkpoints, name)
    set_trainable(policy.model, "all")
    items = prompts()
    batch = policy.encode(items)
    ids, cmask = completions(policy, len(items) * G)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    with torch.no_grad():
        old = reference_logprobs(policy, items, ids, cmask, G) + 0.05 * torch.randn(ids.shape)
        ref = old - 0.1

    def grads(logps):
        policy.model.zero_grad()
        loss, _ = policy_loss(logps, old, advantages, cmask, ref_logps=ref, kl_coef=0.1)
        loss.backward()
        return loss.detach(), {
            n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None
        }

    loss, got = grads(
        policy.logprobs(batch, ids, cmask, group_size=G, micro_batch_size=3, share_prefix=True)
    )
    naive_loss, want = grads(reference_logprobs(policy, items, ids, cmask, G))
    torch.testing.assert_close(loss, naive_loss, rtol=0, atol=1e-6)
    assert got.keys() == want.keys()
    assert any(any(a in n for a in ADAPTER[name]) for n in got)  # the adapter is reached
    for n in want:  # float32 sums in another order: within 1e-5 of the tensor's largest entry
        atol = 1e-5 * float(want[n].abs().max()) + 1e-8  # (+ a floor for gradients that are 0)
        torch.testing.assert_close(
            got[n], want[n], rtol=0, atol=atol, msg=lambda m, n=n: f"{n}: {m}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_trainable_parts_name_each_familys_connector(checkpoints, name):
    """``adapter`` trains exactly the family's connector; the three parts are disjoint and
    hold every parameter; ``adapter+vision`` adds the encoder, ``llm+adapter`` the LLM."""
    policy = Policy.from_pretrained(checkpoints(name))
    model = policy.model
    params = dict(model.named_parameters())

    def trainable(mode):
        set_trainable(model, mode)
        return {n for n, p in params.items() if p.requires_grad}

    adapter = trainable("adapter")
    assert adapter and all(any(a in n for a in ADAPTER[name]) for n in adapter)
    assert adapter == {n for n in params if any(a in n for a in ADAPTER[name])}
    vision = trainable("adapter+vision") - adapter
    llm = trainable("llm+adapter") - adapter
    assert vision and llm and not vision & llm
    assert adapter | vision | llm == set(params)
    report = set_trainable(model, "all")
    assert report.total == sum(p.numel() for p in params.values())


def test_every_family_is_built_and_known():
    assert {t for f in FAMILIES for t in f.model_types} >= set(BUILDERS)


def test_an_unknown_vision_language_family_is_one_line(tmp_path, capsys):
    """A VLM whose family r1v2 lacks (PaliGemma): one line naming its class and the families
    it supports, exit 2, from the library and from the CLI."""
    import transformers as tf

    from r1v2.cli import main

    config = tf.PaliGemmaConfig(
        text_config={
            "model_type": "gemma",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        image_token_index=3,
    )
    model = tf.PaliGemmaForConditionalGeneration(config)
    with pytest.raises(
        R1V2Error, match="PaliGemmaForConditionalGeneration .* supported: Qwen2.5-VL"
    ):
        family_of(model)
    model.save_pretrained(tmp_path / "pali")
    capsys.readouterr()
    rc = main(["chat", "q", "--model", str(tmp_path / "pali"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "PaliGemmaForConditionalGeneration" in err[0] and "Qwen3-VL" in err[0]


def test_a_chat_template_kept_by_the_processor_only(checkpoints):
    """LLaVA-style checkpoints keep their chat template beside the processor only: the
    prompts render as with the tokenizer's."""
    policy = Policy.from_pretrained(checkpoints("llava"))
    want = [policy.render(p) for p in prompts()]
    policy.processor.chat_template = policy.tokenizer.chat_template
    policy.tokenizer.chat_template = None
    assert [policy.render(p) for p in prompts()] == want
    policy.processor.chat_template = None
    with pytest.raises(R1V2Error, match="neither the tokenizer nor the processor"):
        policy.render(prompts()[0])
