"""engine=vllm with a vision-language policy, against r1v2's vLLM server running on a
stand-in for ``vllm.LLM`` that generates with transformers (vLLM's own vision path does not
run on these machines: see tests/test_vllm_engine.py for the text path against real vLLM).

What this checks is r1v2's half of the protocol: the prompts' token ids (image placeholders
expanded) and their images travel to the server, are decoded there into the images the
policy had, reach the engine as ``multi_modal_data``, and the completions come back as a
rollout the policy rescores; pushed weights reach the server. The stand-in processes the
images with the checkpoint's own image processor, as vLLM does, so its greedy tokens must
equal ``engine=transformers``'.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
from argparse import Namespace
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
import torch
from fixtures.worlds import tiny_world
from PIL import Image
from test_rollout_engines import GREEDY, vlm_items
from test_vllm_engine import kept
from transformers import AutoModelForImageTextToText, AutoProcessor

from r1v2.cli import main
from r1v2.model.policy import Policy, SamplingConfig
from r1v2.rollout import vllm_server
from r1v2.rollout.engine import TransformersEngine
from r1v2.rollout.vllm_engine import VLLMEngine
from r1v2.train.metrics import read_metrics


class StandInLLM:
    """The part of ``vllm.LLM`` the server uses, generating with transformers; it keeps the
    prompts it was given (``prompts``) and the folders it reloaded (``reloads``)."""

    def __init__(self, model: str, **kwargs: object):
        assert kwargs["skip_tokenizer_init"] is False  # vLLM's multimodal processors need it
        self.model = AutoModelForImageTextToText.from_pretrained(model).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        self.prompts: list[dict] = []
        self.reloads: list[str] = []

    def expand(self, ids: list[int], images: list) -> list[int]:
        """Each image's placeholder token replaced by its feature tokens, as vLLM's InternVL
        processor does (the placeholder once per image in, ``<img>`` + features + ``</img>``
        out)."""
        token = self.processor.image_token
        placeholder = self.processor.tokenizer.convert_tokens_to_ids(token)
        out, left = [], list(images)
        for t in ids:
            if t == placeholder:
                out += list(self.processor(text=[token], images=[left.pop(0)])["input_ids"][0])
            else:
                out.append(t)
        assert not left, "more images than placeholders"
        return out

    def generate(self, prompts, params, use_tqdm=False):
        outputs = []
        for prompt in prompts:
            self.prompts.append(prompt)
            images = prompt.get("multi_modal_data", {}).get("image") or []
            ids = torch.tensor([self.expand(prompt["prompt_token_ids"], images)])
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if images:
                pixels = self.processor.image_processor(images, return_tensors="pt")
                inputs["pixel_values"] = pixels["pixel_values"]
            greedy = params.temperature == 0
            if not greedy:
                torch.manual_seed(params.seed)
            with torch.no_grad():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=params.max_tokens,
                    do_sample=not greedy,
                    temperature=params.temperature if not greedy else None,
                    top_k=None,
                    top_p=None,
                    num_return_sequences=params.n,
                    eos_token_id=params.stop_token_ids,
                    pad_token_id=params.stop_token_ids[0],
                )
            samples = []
            for row in out[:, ids.shape[1] :].tolist():
                ends = [i for i, t in enumerate(row) if t in params.stop_token_ids]
                samples.append(types.SimpleNamespace(token_ids=row[: ends[0] + 1] if ends else row))
            outputs.append(types.SimpleNamespace(outputs=samples))
        return outputs

    def collective_rpc(self, method: str, kwargs: dict):
        assert method == "reload_weights"
        self.reloads.append(kwargs["weights_path"])
        fresh = AutoModelForImageTextToText.from_pretrained(kwargs["weights_path"])
        self.model.load_state_dict(fresh.state_dict())

    def reset_prefix_cache(self):
        pass


@pytest.fixture
def stand_in_vllm(monkeypatch):
    """``vllm`` and ``vllm.inputs`` as the server imports them, backed by :class:`StandInLLM`."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "stand-in"
    vllm.LLM = StandInLLM
    vllm.SamplingParams = Namespace
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict  # vLLM's TokensPrompt is a TypedDict
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


@contextlib.contextmanager
def serving(model) -> Iterator[tuple[str, vllm_server.Server]]:
    """r1v2's vLLM server on ``model`` in a thread of this process: its URL and itself."""
    args = vllm_server.parse_args(["--model", str(model), "--port", "0"])
    server = vllm_server.Server(args)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), vllm_server.handler(server))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", server
    finally:
        httpd.shutdown()


def test_images_reach_the_server_and_greedy_equals_transformers(stand_in_vllm, tmp_path):
    world = tiny_world(tmp_path, 4)
    with serving(world / "vlm") as (url, server):
        policy = Policy.from_pretrained(world / "vlm")
        engine = VLLMEngine(policy, url, weights_dir=tmp_path / "w")
        items = vlm_items()  # 1, 2 and 0 images, different lengths
        got = engine.generate(items, GREEDY, group_size=2)
        assert kept(got) == kept(TransformersEngine(policy).generate(items, GREEDY, group_size=2))
        sent = server.llm.prompts
        batch = policy.encode(items)
        expanded = [row[m].tolist() for row, m in zip(batch.input_ids, batch.attention_mask)]
        placeholders = [p["prompt_token_ids"].count(policy.image_token_id) for p in sent]
        assert placeholders == [1, 2, 0]  # one per image, unexpanded
        assert [len(p.get("multi_modal_data", {}).get("image", [])) for p in sent] == [1, 2, 0]
        assert sent[2]["prompt_token_ids"] == expanded[2]  # no image: the same tokens
        assert [server.llm.expand(p["prompt_token_ids"], im) for p, im in
                zip(sent, ([items[0][1][0]], items[1][1], []))] == expanded  # fmt: skip
        for image, want in zip(sent[1]["multi_modal_data"]["image"], items[1][1]):
            assert np.array_equal(np.asarray(image), np.asarray(want.convert("RGB")))
        assert got.prompts.pixel_values is not None  # the rollout carries the images to rescore
        logps = policy.logprobs(got.prompts, got.completion_ids, got.completion_mask, group_size=2)
        assert logps.shape == got.completion_ids.shape and torch.isfinite(logps).all()

        with torch.no_grad():  # pushed weights reach the server
            for p in policy.model.model.language_model.parameters():
                p.mul_(-1.0)
        engine.sync_weights()
        after = kept(engine.generate(items, GREEDY))
        assert after == kept(TransformersEngine(policy).generate(items, GREEDY))
        assert after != kept(got)[::2] and len(server.llm.reloads) == 1


def test_grpo_on_a_vlm_through_vllm(stand_in_vllm, tmp_path, monkeypatch):
    """Three GRPO steps of a VLM with engine=vllm, off the defaults (LLM + adapter train, a
    micro-batch under the step, temperature 0.8): every step's prompts carry their images,
    and the server holds the weights of step 2 at the end."""
    from r1v2.rewards.hybrid import HybridReward

    # random models never answer right: rewards that vary within a group, for the update
    monkeypatch.setattr(HybridReward, "_accuracy", lambda self, c, s: sum(map(ord, c)) % 7 / 6)
    world = tiny_world(tmp_path, 8)
    out = tmp_path / "run"
    args = ["grpo", f"model={world / 'vlm'}", f"data={world / 'data'}", f"output_dir={out}"]
    args += ["engine=vllm", "max_steps=3", "save_steps=1"]
    args += ["prompts_per_step=2", "group_size=3", "micro_batch_size=4"]
    args += ["trainable=llm+adapter", "generation.max_new_tokens=8"]
    args += ["generation.temperature=0.8", "optim.lr=0.05", "progress=false"]
    args += ["tensorboard=false"]
    with serving(world / "vlm") as (url, server):
        assert main([*args, f"vllm_url={url}"]) == 0
    rows = [r for r in read_metrics(out) if r.get("step", 0) > 0]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert len(server.llm.prompts) == 3 * 2
    assert all(len(p["multi_modal_data"]["image"]) == 1 for p in server.llm.prompts)
    assert server.version == 2 and len(server.llm.reloads) == 2
    policy = Policy.from_pretrained(world / "vlm")
    from safetensors.torch import load_file

    trained = load_file(str(out / "checkpoint-00000002" / "trainable.safetensors"))
    served, start = server.llm.model.state_dict(), policy.model.state_dict()
    for name, value in trained.items():
        assert torch.equal(served[name], value), name
    assert any(not torch.equal(start[name], value) for name, value in trained.items())


def test_a_batch_without_its_images_is_refused(stand_in_vllm, tmp_path):
    """An encoded batch has lost its images' pixels as vLLM takes them: refused in one line;
    one without images is served as the text it is."""
    from r1v2.errors import R1V2Error

    world = tiny_world(tmp_path, 2)
    with serving(world / "vlm") as (url, _):
        policy = Policy.from_pretrained(world / "vlm")
        engine = VLLMEngine(policy, url, weights_dir=tmp_path / "w")
        with pytest.raises(R1V2Error, match="give it the samples, not an encoded batch"):
            engine.generate(policy.encode(vlm_items()), SamplingConfig(max_new_tokens=2))
        text = policy.encode(["how many circles ?", "how many blue ?"])
        assert kept(engine.generate(text, GREEDY)) == kept(
            TransformersEngine(policy).generate(text, GREEDY)
        )


def test_server_decodes_the_images_it_is_sent():
    from r1v2.rollout.vllm_engine import png_base64

    image = Image.fromarray(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3))
    made = vllm_server.token_prompts(dict, [[1, 2], [3]], [[png_base64(image)], []])
    assert made[1] == {"prompt_token_ids": [3]}
    assert np.array_equal(np.asarray(made[0]["multi_modal_data"]["image"][0]), np.asarray(image))
    with pytest.raises(vllm_server.BadRequest, match="1 image lists for 2 prompts"):
        vllm_server.token_prompts(dict, [[1], [2]], [[]])
