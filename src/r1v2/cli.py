"""The ``r1v2`` command: parses arguments, resolves the command's config, calls one function.

Every subcommand takes the same shape of arguments::

    r1v2 COMMAND [CONFIG.yaml] [key=value ...] [--key value ...] [--print-config]

``--key value`` is the same as ``key=value`` (dots for nested keys: ``--ssb.enabled false``).
A command may name one field that takes bare positional arguments (``r1v2 data check FILE``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from collections.abc import Sequence

from r1v2 import __version__
from r1v2.config import ConfigError, leaf_fields, parse_override, resolve, to_yaml
from r1v2.errors import R1V2Error


@dataclasses.dataclass(frozen=True)
class Command:
    name: str  # words of the command, e.g. "data check"
    help: str  # one line for `r1v2 --help`
    config: str  # "module:DataclassName"
    run: str  # "module:function"; called with the resolved config, returns an exit code
    positional: str | None = None  # the config field that takes bare positional arguments
    description: str = ""  # longer text for `r1v2 COMMAND --help`


COMMANDS: list[Command] = [
    # Each entry is a command that does the real thing; keep this list sorted by name.
    Command(
        name="assemble",
        help="Join a vision encoder, a fresh MLP adapter and an LLM into one checkpoint",
        config="r1v2.model.assemble:AssembleConfig",
        run="r1v2.model.assemble:run",
        description=(
            "Modular reassembly: --vision DIR (InternViT-style encoder) + a freshly initialised "
            "adapter (pixel shuffle, LayerNorm, Linear, GELU, Linear) + --llm DIR (causal LM with "
            "its tokenizer) -> --out DIR, an InternVLForConditionalGeneration checkpoint with its "
            "processor and a chat template that opens <think>. Vision and LLM weights are copied "
            "bit for bit."
        ),
    ),
    Command(
        name="chat",
        help="Ask a checkpoint one question (optionally about images); the answer streams",
        config="r1v2.rollout.chat:ChatConfig",
        run="r1v2.rollout.chat:run",
        positional="question",
        description=(
            'r1v2 chat --model DIR [--image FILE ...] "question": the question through the '
            "model's chat template (images first), greedy by default, tokens printed as they "
            "are generated. Any assembled, trained (OUTPUT_DIR/final) or exported checkpoint."
        ),
    ),
    Command(
        name="data check",
        help="Validate sample files (JSONL/parquet): counts by kind, image stats, every problem",
        config="r1v2.data.check:DataCheckConfig",
        run="r1v2.data.check:run_data_check",
        positional="paths",
    ),
    Command(
        name="data synth",
        help="Write the synthetic visual-reasoning task (grid scenes, levels 1-3) as JSONL + PNGs",
        config="r1v2.data.synthetic.command:SynthConfig",
        run="r1v2.data.synthetic.command:run_synth",
        description=(
            "Draw --n grid scenes with questions of 1-3 reasoning steps (count one group; sum, "
            "difference or comparison of two; arithmetic over three), their answers and reference "
            "traces, into --out/samples.jsonl and --out/images/. Same --seed, same bytes."
        ),
    ),
    Command(
        name="demo",
        help="Run the whole recipe on the toy world (assemble, MPO, GRPO, eval) and write a report",
        config="r1v2.toy.demo:DemoConfig",
        run="r1v2.toy.demo:run",
        description=(
            "The toy world (built, or reused) -> the assembled VLM's held-out accuracy and "
            "hallucination rate -> MPO with reward-model pairs -> GRPO with the hybrid reward "
            "and the Selective Sample Buffer -> the same evaluation after each stage, then "
            "OUT/report.md (+ .html, plots/) and the final model in OUT/model. A re-run skips "
            "finished stages and resumes an interrupted one. About 14 minutes on 2 CPU cores; "
            "--fast: the same stages on a small world in about a minute; --ablations: the "
            "paper's comparisons in miniature (each arm on the main run's budget)."
        ),
    ),
    Command(
        name="demo summary",
        help="Put several demo runs (one per seed) side by side: mean +- std of every stage",
        config="r1v2.toy.demo:SummaryConfig",
        run="r1v2.toy.demo:run_summary",
        positional="runs",
    ),
    Command(
        name="eval",
        help="Evaluate a checkpoint or a responses file on benchmarks: Pass@1 over k runs, reports",
        config="r1v2.eval.command:EvalConfig",
        run="r1v2.eval.command:run_eval",
        description=(
            "Evaluate on local benchmark copies (--bench NAME=PATH, repeatable): generate k sampled "
            "responses per question with --model DIR (cached, resumable), or score another "
            "system's --responses FILE; rules plus an optional LLM judge; writes results.json, "
            "results.md and results.png to --out."
        ),
    ),
    Command(
        name="eval compare",
        help="Print two evaluation results (results.json) side by side",
        config="r1v2.eval.command:EvalCompareConfig",
        run="r1v2.eval.command:run_compare",
        positional="paths",
    ),
    Command(
        name="toy build",
        help="Build the toy world on a CPU: tiny LM, vision encoder, assembled VLM, reward model, data",
        config="r1v2.toy.build:ToyBuildConfig",
        run="r1v2.toy.build:run",
        description=(
            "Pretrain a tiny reasoning LM on text traces and a tiny InternViT-style encoder on "
            "per-cell recognition, assemble them (r1v2 assemble's code path), warm up the "
            "adapter on image -> cell words, train the reward model, and write the RL prompt "
            "pool and a held-out test set into --out (lm/, vision/, vlm/, rm/, data/). "
            "Deterministic by --seed; stages already built with the same settings are reused."
        ),
    ),
    Command(
        name="toy eval",
        help="Measure a toy build: greedy accuracy and hallucination rate of its LM and VLM",
        config="r1v2.toy.measure:ToyEvalConfig",
        run="r1v2.toy.measure:run_eval",
    ),
    Command(
        name="export",
        help="Write a training checkpoint as an ordinary transformers checkpoint for inference",
        config="r1v2.train.export:ExportConfig",
        run="r1v2.train.export:run",
        description=(
            "Load the run's base model (meta.json 'model', or --base_model), apply --checkpoint's "
            "trained weights (a checkpoint-N folder, or a run folder: its newest) and write model "
            "and processor to --out, through a temporary folder swapped into place. --out may "
            "not be, lie inside or hold the base model, the checkpoint or its run folder; an "
            "existing non-empty --out needs overwrite=true."
        ),
    ),
    Command(
        name="grpo",
        help="Train with GRPO: hybrid reward, group advantages, the Selective Sample Buffer",
        config="r1v2.train.grpo:GRPOConfig",
        run="r1v2.train.grpo:run",
        description=(
            "GRPO (R1V2 stage two): G rollouts per prompt, hybrid reward (accuracy + reward model "
            "+ format), group-normalised advantages, the Selective Sample Buffer replaying "
            "high-|A| samples into zero-advantage slots, clipped policy updates with a KL term. "
            "Checkpoints every save_steps; resume=auto continues the newest one. Multi-process: "
            "accelerate launch --num_processes K -m r1v2 grpo ... (add sharding=fsdp to shard "
            "the model with torch FSDP2); torchrun --nproc_per_node K on a CPU."
        ),
    ),
    Command(
        name="mpo",
        help="Train with Mixed Preference Optimization: pairs from n responses, reward model, rules",
        config="r1v2.train.mpo:MPOConfig",
        run="r1v2.train.mpo:run",
        description=(
            "MPO (R1V2 stage one): each round samples n responses per prompt from the current "
            "policy, scores them with the reward model (rm_path), and keeps one pair per prompt "
            "(chosen: the best response passing the rules - correct answer, format, no repeated "
            "reasoning; rejected: the lowest-scoring) when the score gap is >= threshold, then "
            "takes `epochs` optimizer steps on DPO + BCO + NLL (loss.weights). data= may be an "
            "offline pairs file (question, chosen, rejected, image/images per line). Probe and "
            "hallucination guard (guard.*), checkpoints, resume=auto; torchrun --nproc_per_node "
            "K -m r1v2 mpo on a CPU."
        ),
    ),
    Command(
        name="mpo pairs",
        help="Write the preference pairs one MPO round builds (offline pairs layout)",
        config="r1v2.train.mpo:MPOPairsConfig",
        run="r1v2.train.mpo:run_pairs",
    ),
    Command(
        name="plot",
        help="Training curves of GRPO runs (reward, effective ratio, probe accuracy) as a PNG",
        config="r1v2.train.plot:PlotConfig",
        run="r1v2.train.plot:run",
        positional="runs",
        description=(
            "r1v2 plot RUN [RUN ...] --out curves.png: four panels against the step, one line "
            "per run: rolling mean reward, effective ratio after (solid) and before (dashed) "
            "replay, probe accuracy and probe hallucination rate, from each run's metrics.jsonl."
        ),
    ),
    Command(
        name="vllm-serve",
        help="Start the vLLM rollout server of engine=vllm (in the Python that has vLLM)",
        config="r1v2.rollout.vllm_engine:VLLMServeConfig",
        run="r1v2.rollout.vllm_engine:serve",
    ),
    Command(
        name="prefilter",
        help="Drop prompts whose k rollouts all get the same reward (offline filtering for GRPO)",
        config="r1v2.train.prefilter:PrefilterConfig",
        run="r1v2.train.prefilter:run",
    ),
]


def _load(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {c.name:<16} {c.help}" for c in sorted(COMMANDS, key=lambda c: c.name)]
    parser = argparse.ArgumentParser(
        prog="r1v2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train multimodal reasoning models the Skywork R1V2 way: modular reassembly, "
            "Mixed Preference Optimization, GRPO with the Selective Sample Buffer, evaluation."
        ),
        epilog="commands:\n"
        + "\n".join(lines)
        + "\n\nRun `r1v2 COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"r1v2 {__version__}")
    parser.add_argument("command", nargs="*", help="the command to run (see below)")
    return parser


def _command_parser(cmd: Command, config_cls: type) -> argparse.ArgumentParser:
    pos = f" [{cmd.positional.upper()} ...]" if cmd.positional else ""
    parser = argparse.ArgumentParser(
        prog=f"r1v2 {cmd.name}",
        usage=f"r1v2 {cmd.name}{pos} [CONFIG.yaml] [key=value ...] [--key value ...]",
        description=cmd.description or cmd.help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    group = parser.add_argument_group("config (also settable as key=value or in CONFIG.yaml)")
    for key, (tp, help_text, default) in leaf_fields(config_cls).items():
        shown = "required" if default is dataclasses.MISSING else f"default: {default!r}"
        # `--max-new-tokens` works as well as `--max_new_tokens`; a list field's flag repeats.
        dashed = [f"--{key.replace('_', '-')}"] if "_" in key else []
        repeat = _is_list(tp)
        group.add_argument(
            f"--{key}",
            *dashed,
            dest=f"cfg:{key}",
            metavar="VALUE",
            default=argparse.SUPPRESS,
            action="append" if repeat else "store",
            help=f"{help_text} ({shown}{'; repeatable' if repeat else ''})".replace("%", "%%"),
        )
    return parser


BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def _bare_bools(args: list[str], config_cls: type) -> list[str]:
    """A bool flag alone means true: ``--fast`` is ``--fast true`` (also before another
    flag or a ``key=value``)."""
    flags = {
        f"--{spelling}"
        for key, (tp, _, _) in leaf_fields(config_cls).items()
        if tp is bool
        for spelling in {key, key.replace("_", "-")}
    }
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        following = args[i + 1].lower() if i + 1 < len(args) else None
        if a in flags and following not in BOOL_WORDS:
            out.append("true")
    return out


def _is_list(tp) -> bool:
    """A ``list[...]`` field, or an optional one (``list[str] | None``)."""
    if tp is list or typing.get_origin(tp) is list:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and any(
        _is_list(a) for a in typing.get_args(tp)
    )


def _flag_item(key: str, value):
    """One ``--key value`` as an override; a list field's repeated flags collect into one list
    (a value that is itself a YAML list, ``--tags [a, b]``, is spliced in)."""
    if not isinstance(value, list):
        return parse_override(f"{key}={value}")
    items: list = []
    for v in value:
        parsed = parse_override(f"{key}={v}")[1]
        items.extend(parsed if isinstance(parsed, list) else [parsed])
    return key, items


def _match(argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    best, best_len = None, 0
    for cmd in COMMANDS:
        words = cmd.name.split()
        if list(argv[: len(words)]) == words and len(words) > best_len:
            best, best_len = cmd, len(words)
    return best, list(argv[best_len:])


def _split_args(args: list[str], cmd: Command) -> tuple[str | None, list[str], list[str]]:
    config_file, overrides, positional = None, [], []
    for i, a in enumerate(args):
        if "=" in a and not a.startswith("-"):
            overrides.append(a)
        elif i == 0 and a.endswith((".yaml", ".yml")) and config_file is None:
            config_file = a
        elif cmd.positional is not None:
            positional.append(a)
        else:
            raise ConfigError(
                f"unexpected argument {a!r}: expected CONFIG.yaml first, then key=value overrides"
            )
    return config_file, overrides, positional


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd, rest = _match(argv)
    if cmd is None:
        parser = _top_parser()
        ns = parser.parse_args(argv)
        if ns.command:
            parser.error(f"unknown command: {' '.join(ns.command)}")
        parser.print_help()
        return 0
    config_cls = _load(cmd.config)
    # intermixed: key=value overrides and positionals may follow --flags (plot RUN --out F k=v)
    ns = _command_parser(cmd, config_cls).parse_intermixed_args(_bare_bools(rest, config_cls))
    try:
        config_file, overrides, positional = _split_args(ns.args, cmd)
        flags = [(k[4:], v) for k, v in vars(ns).items() if k.startswith("cfg:")]
        items: list = list(overrides)
        items += [_flag_item(k, v) for k, v in flags]
        if positional:
            field_type = leaf_fields(config_cls)[cmd.positional][0]
            value = positional if "list" in str(field_type).lower() else positional[0]
            if not isinstance(value, list) and len(positional) > 1:
                raise ConfigError(f"{cmd.name} takes one {cmd.positional}, got {positional}")
            items.append((cmd.positional, value))
        cfg = resolve(config_cls, config_file, items)
    except R1V2Error as e:  # ConfigError, or a config's own validate()
        return _error(cmd, e)
    if ns.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        code = _load(cmd.run)(cfg)
    except R1V2Error as e:  # a problem the user can fix: bad input, a missing file, ...
        return _error(cmd, e)
    return int(code or 0)


def _error(cmd: Command, e: R1V2Error) -> int:
    """Print ``r1v2 CMD: error: MESSAGE`` as one line on stderr; return exit code 2.

    A message that quotes another library's multi-line text (a YAML parser's, say) has its
    lines joined with " | ".
    """
    message = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"r1v2 {cmd.name}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
