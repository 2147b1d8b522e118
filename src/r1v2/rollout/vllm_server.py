"""A vLLM rollout server for ``engine=vllm``: one ``vllm.LLM`` behind a small HTTP API.

It runs in the Python environment that has vLLM (often its own virtual environment, when
vLLM pins another torch than the trainer's) and imports nothing of r1v2 but this file, so it
is started by path:

    /path/to/vllm-venv/bin/python src/r1v2/rollout/vllm_server.py --model DIR --port 8100
    r1v2 vllm-serve --model DIR --python /path/to/vllm-venv/bin/python     # the same

The trainer (:class:`r1v2.rollout.vllm_engine.VLLMEngine`) sends prompts as token ids and gets the
sampled token ids back; after each optimizer step it writes the policy's weights to a folder
both can read and asks the server to load them (vLLM's ``reload_weights``, in place), which
bumps the server's weight version. A generate request names the version it expects and is
refused with HTTP 409 when the server holds another, so no step samples from stale weights.

    GET  /health        {"model", "weights_version", "vllm", "config": {...}}
    POST /generate      {"prompts": [[ids]], "images": [[PNG as base64] per prompt] (optional),
                         "n", "temperature", "top_p", "top_k", "max_tokens",
                         "stop_token_ids", "ignore_eos", "seed", "weights_version"}
                         -> {"completions": [[ids] per sample], ...}
    POST /load_weights  {"path": DIR, "version": int} -> {"weights_version": int}

A prompt with images goes to vLLM as ``TokensPrompt(prompt_token_ids, multi_modal_data=
{"image": [...]})``: its ids hold one placeholder token per image, as the chat template
writes it, which vLLM's multimodal processor expands into the image's feature tokens (a
vision-language model is therefore served with its tokenizer loaded).

Requests are served one at a time (one engine); vLLM batches the prompts of a request.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONFIG_KEYS = ("architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers")


def model_identity(path: str) -> dict:
    """What a client compares to tell whether the server serves its model."""
    config = json.loads((Path(path) / "config.json").read_text())
    text = config.get("text_config") or config
    return {k: text.get(k, config.get(k)) for k in CONFIG_KEYS}


def multimodal(path: str) -> bool:
    """Whether the checkpoint at ``path`` is a vision-language model (it has a vision config)."""
    return "vision_config" in json.loads((Path(path) / "config.json").read_text())


class Server:
    """The engine, its weight version, and the three operations of the API."""

    def __init__(self, args: argparse.Namespace):
        from vllm import LLM

        self.model = args.model
        self.identity = model_identity(args.model)
        self.version = 0
        self.lock = threading.Lock()
        self.llm = LLM(
            model=args.model,
            # prompts and completions travel as token ids; vLLM's multimodal processors need
            # the tokenizer (they expand the image placeholders)
            skip_tokenizer_init=not multimodal(args.model),
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            seed=args.seed,
            enable_prefix_caching=True,
            **({"gpu_memory_utilization": args.gpu_memory_utilization} if args.gpu else {}),
        )

    def health(self) -> dict:
        import vllm

        return {
            "model": self.model,
            "weights_version": self.version,
            "vllm": vllm.__version__,
            "config": self.identity,
        }

    def generate(self, req: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        with self.lock:
            if req.get("weights_version", self.version) != self.version:
                raise Conflict(
                    f"the server holds weights version {self.version}, the request expects "
                    f"{req['weights_version']}"
                )
            greedy = req.get("temperature", 1.0) == 0
            n = int(req.get("n", 1))
            params = SamplingParams(
                n=1 if greedy else n,  # vLLM refuses n > 1 for greedy: the copies are equal
                temperature=float(req.get("temperature", 1.0)),
                top_p=float(req.get("top_p", 1.0)),
                top_k=int(req.get("top_k", 0)) or -1,
                max_tokens=int(req["max_tokens"]),
                stop_token_ids=list(req.get("stop_token_ids", [])),
                ignore_eos=bool(req.get("ignore_eos", False)),
                seed=None if greedy else req.get("seed"),
                detokenize=False,
            )
            prompts = token_prompts(TokensPrompt, req["prompts"], req.get("images"))
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            copies = n if greedy else 1
            completions = [list(o.token_ids) for out in outputs for o in out.outputs]
            completions = [c for c in completions for _ in range(copies)]
            return {"completions": completions, "weights_version": self.version}

    def load_weights(self, req: dict) -> dict:
        with self.lock:
            path = str(req["path"])
            if not Path(path, "config.json").is_file():
                raise BadRequest(f"{path}: no checkpoint to load (config.json missing)")
            if model_identity(path) != self.identity:
                raise BadRequest(f"{path} holds another model than the server's {self.model}")
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
            self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
            self.version = int(req["version"])
            return {"weights_version": self.version}


def token_prompts(make, prompts: list, images: list | None) -> list:
    """vLLM prompts (``make``: its ``TokensPrompt``) of token ids, each with its images
    (decoded from base64 PNG) as multi-modal data when it has any."""
    if images is not None and len(images) != len(prompts):
        raise BadRequest(f"{len(images)} image lists for {len(prompts)} prompts")
    out = []
    for i, ids in enumerate(prompts):
        mine = [decode_image(b) for b in (images[i] if images else ())]
        extra = {"multi_modal_data": {"image": mine}} if mine else {}
        out.append(make(prompt_token_ids=list(ids), **extra))
    return out


def decode_image(data: str):
    """A PIL image (RGB) from the text of its PNG bytes."""
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


class BadRequest(Exception):
    status = 400


class Conflict(Exception):
    status = 409


def handler(server: Server) -> type[BaseHTTPRequestHandler]:
    routes = {"/generate": server.generate, "/load_weights": server.load_weights}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                self._send(200, server.health())
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            route = routes.get(self.path)
            if route is None:
                self._send(404, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                self._send(200, route(json.loads(self.rfile.read(length) or b"{}")))
            except (BadRequest, Conflict) as e:
                self._send(e.status, {"error": str(e)})
            except (KeyError, ValueError, TypeError) as e:
                self._send(400, {"error": f"bad request: {type(e).__name__}: {e}"})
            except Exception as e:  # the engine failed: say so, stay up
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

        def log_message(self, format: str, *args) -> None:  # quiet: one line per error only
            pass

    return Handler


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="vLLM rollout server for r1v2's engine=vllm")
    p.add_argument("--model", required=True, help="checkpoint folder (transformers layout)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", action="store_true", help="on a GPU: set gpu_memory_utilization")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    server = Server(args)
    httpd = ThreadingHTTPServer((args.host, args.port), handler(server))
    print(f"r1v2 vLLM server: {args.model} on http://{args.host}:{args.port}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


if __name__ == "__main__":  # vLLM starts its workers with spawn: the guard is required
    main()
