"""The KL reference held as the trainable parameters only (r1v2.train.reference).

Checked against today's reference, ``copy.deepcopy(policy.model)`` taken at the start: the
log-probs inside ``active()`` must be bitwise those of the deep copy, the model must come back
bitwise (also after an exception), and the optimizer must take the same next step as a twin
that never swapped.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fixtures.worlds import tiny_world

from r1v2.data.loaders import load_samples
from r1v2.errors import R1V2Error
from r1v2.model.freeze import set_trainable
from r1v2.model.policy import Policy
from r1v2.train.reference import Reference

MODES = ["adapter", "llm+adapter"]
G = 2  # completions per prompt
TC = 6  # completion length


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    tiny_world(root, 4)
    return root


def make(world, trainable):
    """A fresh policy (eval mode: no dropout anywhere) with ``trainable`` parts, its AdamW,
    and one batch: 2 prompts x G random completions, the last one padded after 3 tokens."""
    policy = Policy.from_pretrained(world / "vlm")
    set_trainable(policy.model, trainable)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    samples = load_samples(world / "data").samples[:2]
    prompts = policy.encode(samples)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, len(policy.tokenizer), (2 * G, TC), generator=gen)  # [N, Tc]
    mask = torch.ones(2 * G, TC, dtype=torch.bool)  # [N, Tc]
    mask[-1, 3:] = False
    index = torch.arange(2).repeat_interleave(G)  # [N]
    return policy, optimizer, (prompts, ids, mask, index)


def logprobs(policy, batch, model=None, run=None):
    prompts, ids, mask, index = batch
    call = (lambda fn, *a, **k: fn(*a, **k)) if run is None else run
    with torch.no_grad():
        return call(policy.logprobs, prompts, ids, mask, prompt_index=index, model=model)


def train_steps(policy, optimizer, batch, n, run=None):
    """``n`` AdamW steps on the mean negative log-likelihood of the batch's tokens."""
    prompts, ids, mask, index = batch
    call = (lambda fn, *a, **k: fn(*a, **k)) if run is None else run
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        logps = call(policy.logprobs, prompts, ids, mask, prompt_index=index)  # [N, Tc]
        (-logps.sum() / mask.sum()).backward()
        optimizer.step()


def trainable(policy):
    return {n: p for n, p in policy.model.named_parameters() if p.requires_grad}


def values(params):
    return {n: p.detach().clone() for n, p in params.items()}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("mode", MODES)
def test_active_scores_exactly_the_deepcopy_reference_then_restores(world, mode):
    policy, optimizer, batch = make(world, mode)
    deep = copy.deepcopy(policy.model).eval().requires_grad_(False)  # today's reference
    reference = Reference(policy.model)
    assert reference.names == list(trainable(policy))
    train_steps(policy, optimizer, batch, 3)

    expected = logprobs(policy, batch, model=deep)
    current = logprobs(policy, batch)
    assert not torch.equal(current, expected)  # training moved the policy
    params = trainable(policy)
    before = values(params)
    identity = {n: (id(p), p.data_ptr()) for n, p in params.items()}

    with torch.no_grad(), reference.active():
        got = logprobs(policy, batch)
        inside = values(trainable(policy))
    assert torch.equal(got, expected)
    assert_bitwise(inside, {n: deep.get_parameter(n) for n in inside})
    # Out again: the same parameter objects and storage, holding the trained values.
    assert {n: (id(p), p.data_ptr()) for n, p in trainable(policy).items()} == identity
    assert_bitwise(values(trainable(policy)), before)
    assert torch.equal(logprobs(policy, batch), current)
    # The snapshot is still the reference (entering again gives it again).
    with reference.active():
        assert torch.equal(logprobs(policy, batch), expected)


@pytest.mark.parametrize("mode", MODES)
def test_optimizer_takes_the_same_step_as_without_the_swap(world, mode):
    """Twin A scores the reference between its steps, twin B never does: same weights and
    same AdamW state after the next step (the state is keyed by the same parameters)."""
    a, opt_a, batch = make(world, mode)
    b, opt_b, _ = make(world, mode)
    reference = Reference(a.model)
    train_steps(a, opt_a, batch, 2)
    train_steps(b, opt_b, batch, 2)
    with reference.active():
        logprobs(a, batch)
    train_steps(a, opt_a, batch, 1)
    train_steps(b, opt_b, batch, 1)

    assert_bitwise(values(trainable(a)), values(trainable(b)))
    params_a = list(trainable(a).values())
    assert list(opt_a.state) == params_a  # still keyed by the model's own parameters
    for pa, pb in zip(params_a, trainable(b).values()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a.state[pa][key], opt_b.state[pb][key]), key


def test_exception_inside_active_restores(world):
    policy, optimizer, batch = make(world, "adapter")
    expected = logprobs(policy, batch)  # the start is the reference
    reference = Reference(policy.model)
    train_steps(policy, optimizer, batch, 2)
    before = values(trainable(policy))

    with pytest.raises(ValueError, match="boom"):
        with reference.active():
            assert torch.equal(logprobs(policy, batch), expected)
            raise ValueError("boom")
    assert_bitwise(values(trainable(policy)), before)
    with reference.active():  # not left half-entered; the snapshot is intact
        assert torch.equal(logprobs(policy, batch), expected)
    assert_bitwise(values(trainable(policy)), before)


def test_active_does_not_nest_and_runs_without_grad(world):
    policy, _, _ = make(world, "adapter")
    reference = Reference(policy.model)
    before = values(trainable(policy))
    with reference.active():
        assert not torch.is_grad_enabled()
        with pytest.raises(R1V2Error, match="does not nest"):
            with reference.active():
                pass
    assert torch.is_grad_enabled()
    assert_bitwise(values(trainable(policy)), before)


@pytest.mark.parametrize("mode", MODES)
def test_memory_held_is_the_trainable_part_only(world, mode):
    policy, _, _ = make(world, mode)
    reference = Reference(policy.model)
    params = trainable(policy)
    assert reference.nbytes == sum(p.numel() * p.element_size() for p in params.values())
    total = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    assert 0 < reference.nbytes < total
    if mode == "adapter":
        adapter = policy.model.model.multi_modal_projector.parameters()
        assert reference.nbytes == sum(p.numel() * p.element_size() for p in adapter)
    # Clones, not aliases of the parameters.
    held = {v.data_ptr() for v in reference._values}
    assert held.isdisjoint(p.data_ptr() for p in policy.model.parameters())


def test_state_dict_round_trip(world):
    policy, optimizer, batch = make(world, "adapter")
    start = values(trainable(policy))
    expected = logprobs(policy, batch)
    state = Reference(policy.model).state_dict()
    assert_bitwise(state, start)
    assert all(v.device.type == "cpu" for v in state.values())
    state[next(iter(state))].add_(1.0)  # a copy: writing into it changes nothing held
    state = Reference(policy.model).state_dict()

    train_steps(policy, optimizer, batch, 2)
    resumed = Reference(policy.model)  # snapshot of the trained model ...
    resumed.load_state_dict(state)  # ... set back to the start, as after a resume
    with resumed.active():
        assert torch.equal(logprobs(policy, batch), expected)
        assert_bitwise(resumed.state_dict(), start)  # the values are in the model just now

    name = next(iter(state))
    with pytest.raises(R1V2Error, match=rf"missing \['{name}'\]"):
        resumed.load_state_dict({k: v for k, v in state.items() if k != name})
    with pytest.raises(R1V2Error, match=rf"'{name}'.*expected"):
        resumed.load_state_dict({**state, name: state[name].double()})


def test_fsdp2_shards(world, tmp_path):
    """One process, torch FSDP2 over a mesh of 1: the parameters are DTensor shards, and a
    forward without gradients leaves the root unit gathered (a stale copy unless resharded)."""
    import torch.distributed as dist

    from r1v2.train.sharding import shard_model

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        policy, _, batch = make(world, "adapter")
        start = values(trainable(policy))
        run = shard_model(policy.model, "cpu")
        params = [p for p in policy.model.parameters() if p.requires_grad]
        assert all(hasattr(p, "device_mesh") for p in params)
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        reference = Reference(policy.model, root=run)  # as a trainer would: right after sharding
        expected = logprobs(policy, batch, run=run)  # leaves the root (adapter) gathered
        late = Reference(policy.model, root=run)  # taken while gathered: still of the shards
        for r in (reference, late):
            assert all(hasattr(v, "device_mesh") for v in r._values)
            assert r.nbytes == sum(v.numel() * v.element_size() for v in start.values())
        train_steps(policy, optimizer, batch, 2, run=run)

        current = logprobs(policy, batch, run=run)  # gathered again, with the trained values
        assert not torch.equal(current, expected)
        for r in (reference, late):
            with r.active():
                assert torch.equal(logprobs(policy, batch, run=run), expected)
            assert torch.equal(logprobs(policy, batch, run=run), current)

        state = late.state_dict()  # whole tensors, gathered
        assert_bitwise(state, start)
        resumed = Reference(policy.model, root=run)
        resumed.load_state_dict(state)
        with resumed.active():
            assert torch.equal(logprobs(policy, batch, run=run), expected)
    finally:
        dist.destroy_process_group()
