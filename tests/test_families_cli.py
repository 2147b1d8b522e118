"""The commands a user runs, on every supported family's tiny checkpoint: ``r1v2 grpo``,
``r1v2 mpo`` (offline pairs), ``r1v2 eval``, ``r1v2 chat``, ``r1v2 export``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from r1v2.cli import main
from r1v2.data.synthetic import generate
from r1v2.model.policy import Policy
from r1v2.toy.families import BUILDERS, build_family

pytestmark = pytest.mark.slow
QUIET = ["progress=false", "tensorboard=false"]


@pytest.fixture(autouse=True)
def mixed_rewards(monkeypatch):
    """Random models never answer right, so every group would tie and GRPO would have no
    advantage to follow: here a completion's accuracy is its characters' sum mod 7, over 6."""
    from r1v2.rewards.hybrid import HybridReward

    monkeypatch.setattr(HybridReward, "_accuracy", lambda self, c, s: sum(map(ord, c)) % 7 / 6)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("family-data")
    generate(6, 0, root / "data")
    pairs = root / "pairs"
    pairs.mkdir()
    with open(pairs / "pairs.jsonl", "w") as f:
        for line in (root / "data" / "samples.jsonl").read_text().splitlines():
            s = json.loads(line)
            wrong = "1" if s["answer"] == "0" else "0"
            row = {
                "question": s["question"],
                "image": str((root / "data" / s["images"][0]).resolve()),
                "chosen": f"so the answer is \\boxed{{{s['answer']}}}",
                "rejected": f"so the answer is \\boxed{{{wrong}}}",
            }
            f.write(json.dumps(row) + "\n")
    return root


def weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def changed(before, after) -> set[str]:
    return {k for k in after if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_family_through_every_command(name, data, tmp_path, capsys):
    """GRPO and MPO train the family's adapter and nothing else (trainable=adapter); eval
    writes its results; chat answers about an image; export writes a checkpoint that loads
    and holds the run's trained weights."""
    model = build_family(name, tmp_path / "model")
    base = weights(model)
    run = tmp_path / "grpo"
    grpo = ["grpo", f"model={model}", f"data={data / 'data'}", f"output_dir={run}"]
    grpo += ["max_steps=2", "prompts_per_step=2", "group_size=4", "micro_batch_size=3"]
    grpo += ["generation.max_new_tokens=6", "optim.lr=0.01", *QUIET]
    assert main(grpo) == 0, capsys.readouterr().err
    trained = changed(base, weights(run / "final"))
    assert trained and all(k in adapter_names(model) for k in trained)

    mpo = ["mpo", f"model={model}", f"data={data / 'pairs'}", f"output_dir={tmp_path / 'mpo'}"]
    mpo += ["max_steps=2", "micro_batch_size=2", "optim.lr=0.01", *QUIET]
    assert main(mpo) == 0, capsys.readouterr().err
    trained = changed(base, weights(tmp_path / "mpo" / "final"))
    assert trained and all(k in adapter_names(model) for k in trained)

    out = tmp_path / "eval"
    args = ["eval", "--model", str(model), "--bench", f"samples={data / 'data'}", "--runs", "1"]
    args += ["--limit", "3", "--max-new-tokens", "6", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "results.json").is_file()

    image = sorted((data / "data" / "images").glob("*.png"))[0]
    capsys.readouterr()
    args = ["chat", "how many shapes ?", "--model", str(model), "--image", str(image)]
    assert main([*args, "--max-new-tokens", "6", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()

    exported = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(exported)]) == 0
    policy = Policy.from_pretrained(exported)
    assert policy.family.model_types[0] in (name, "idefics3")
    final = weights(run / "final")
    assert all(torch.equal(final[k], v) for k, v in weights(exported).items() if k in final)


def adapter_names(model_dir) -> set[str]:
    """The checkpoint keys of the family's adapter (what trainable=adapter trains)."""
    from r1v2.model.freeze import set_trainable

    policy = Policy.from_pretrained(model_dir)
    set_trainable(policy.model, "adapter")
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    # checkpoint keys may carry the head's tie or the model's own prefix rules: match by suffix
    keys = set(weights(model_dir))
    return {k for k in keys if any(k.endswith(n.removeprefix("model.")) for n in trainable)}


def test_llm_and_adapter_on_qwen3_vl_with_the_compiled_engine(data, tmp_path, capsys):
    """Off the defaults: trainable=llm+adapter, engine=compiled, temperature 0.7, KL on,
    micro-batches smaller than the step: the LLM and the adapter train, the vision encoder
    does not."""
    model = build_family("qwen3_vl", tmp_path / "model")
    base = weights(model)
    run = tmp_path / "grpo"
    args = ["grpo", f"model={model}", f"data={data / 'data'}", f"output_dir={run}"]
    args += ["max_steps=2", "prompts_per_step=2", "group_size=2", "micro_batch_size=1"]
    args += ["trainable=llm+adapter", "engine=compiled", "generation.temperature=0.7"]
    args += ["generation.max_new_tokens=6", "kl_coef=0.1", "optim.lr=0.01", *QUIET]
    assert main(args) == 0, capsys.readouterr().err
    trained = changed(base, weights(run / "final"))
    assert any("language_model" in k for k in trained)
    assert any("visual.merger" in k for k in trained)
    assert not any("visual.blocks" in k or "patch_embed" in k for k in trained)
