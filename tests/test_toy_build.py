"""`r1v2 toy build` at a reduced size, and the pieces it is made of."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from r1v2.cli import main
from r1v2.config import resolve
from r1v2.data.loaders import load_samples
from r1v2.data.pairs import load_pairs
from r1v2.data.synthetic import Scene, hallucinations, iter_samples, render, scene_text
from r1v2.errors import R1V2Error
from r1v2.model.policy import Policy, Prompt, SamplingConfig
from r1v2.toy.align import (
    AlignConfig,
    align_loss,
    alignment_error,
    cell_words,
    warm_up_adapter,
)
from r1v2.toy.build import ToyBuildConfig, stage_hashes
from r1v2.toy.common import completion_text, cosine_schedule, text_user_turn
from r1v2.toy.lm import IGNORE, LMConfig, collate, encode_example, train_lm
from r1v2.toy.measure import evaluate
from r1v2.toy.reward import RewardModelConfig, train_reward_model
from r1v2.toy.vision import cell_classes, pixels, train_vision

TINY = [
    "data.train_size=6",
    "data.test_size=4",
    "lm.steps=2",
    "lm.batch_size=2",
    "lm.hidden_size=32",
    "lm.layers=1",
    "lm.heads=2",
    "vision.steps=2",
    "vision.batch_size=2",
    "vision.hidden_size=32",
    "vision.layers=1",
    "vision.heads=2",
    "align.steps=2",
    "align.batch_size=2",
    "rm.steps=1",
    "rm.batch_size=2",
    "rm.pairs=4",
    "rm.eval_pairs=4",
    "progress=false",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    assert main(["toy", "build", "--out", str(out), *TINY]) == 0
    return out


def test_layout(built: Path):
    for part in ("lm", "vision", "vlm", "rm"):
        assert (built / part / "config.json").is_file(), part
    for split, n in (("train", 6), ("test", 4)):
        lines = (built / "data" / split / "samples.jsonl").read_text().splitlines()
        assert len(lines) == n
    record = json.loads((built / "build.json").read_text())
    assert set(record["stages"]) == {"data", "pairs", "lm", "vision", "vlm", "rm"}
    assert record["config"]["lm"]["steps"] == 2


def test_offline_pairs_are_the_pools_references_over_hallucinated_traces(built: Path):
    """data/pairs: one MMPR-layout pair per training prompt, loadable by ``r1v2 mpo``: the
    prompt as the sample file words it, on the pool's own image; chosen is the reference
    completion (no false claim, right answer), rejected a trace with a false claim."""
    pairs = load_pairs(built / "data" / "pairs").pairs
    samples = load_samples(built / "data" / "train").samples
    assert [p.id for p in pairs] == [s.id for s in samples]  # 6, in order
    for pair, sample, synth in zip(pairs, samples, iter_samples(6, seed=0)):
        assert (pair.question, pair.choices) == (sample.question, sample.choices)
        assert pair.images == sample.images  # the same file, not a copy
        assert pair.chosen == completion_text(synth)
        assert not hallucinations(pair.chosen, synth.scene)
        assert hallucinations(pair.rejected, synth.scene)
        assert pair.metadata["answer"] == sample.answer
    assert not (built / "data" / "pairs" / "pairs_images").exists()


def test_vlm_loads_and_answers_from_an_image(built: Path):
    policy = Policy.from_pretrained(built / "vlm")
    assert policy.is_vlm
    sample = next(iter_samples(1, seed=5))
    rollout = policy.generate(
        [Prompt(sample.question.text, (render(sample.scene),))],
        SamplingConfig(max_new_tokens=4, do_sample=False),
    )
    assert len(rollout.texts) == 1
    assert 1 <= rollout.completion_ids.shape[1] <= 4
    # The user turn holds the 16 image tokens where the LM read the 16 cell words.
    ids = policy.encode([Prompt("x", (render(sample.scene),))]).input_ids
    assert int((ids == policy.image_token_id).sum()) == 16


def test_second_build_reuses_every_stage(built: Path):
    weights = built / "lm" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["toy", "build", "--out", str(built), *TINY]) == 0
    record = json.loads((built / "build.json").read_text())
    assert [s["built"] for s in record["stages"].values()] == [False] * 6
    assert weights.stat().st_mtime_ns == before


def test_toy_eval_reports_lm_vlm_and_reward_model(built: Path, capsys):
    assert main(["toy", "eval", "--out", str(built), "n=4", "batch_size=2"]) == 0
    printed = capsys.readouterr().out
    assert "text LM (scene in words)" in printed and "VLM (image)" in printed
    rm = json.loads((built / "rm" / "rm_metrics.json").read_text())
    assert f"accuracy {rm['accuracy_hallucinated']:.1%} vs hallucinated" in printed
    measured = json.loads((built / "measure.json").read_text())
    assert measured["lm"]["n"] == measured["vlm"]["n"] == 4


def test_changing_the_warm_up_rebuilds_only_what_depends_on_it():
    """align.steps feeds the vlm hash, and the rm hash through it; lm, vision, data keep theirs."""
    a = stage_hashes(ToyBuildConfig(align=AlignConfig(steps=100)))
    b = stage_hashes(ToyBuildConfig(align=AlignConfig(steps=101)))
    assert [k for k in a if a[k] != b[k]] == ["vlm", "rm"]
    c = stage_hashes(
        ToyBuildConfig(align=AlignConfig(steps=100), rm=RewardModelConfig(pooling="last"))
    )
    assert [k for k in a if a[k] != c[k]] == ["rm"]


def test_every_stage_setting_feeds_its_stage_hash():
    """Changing any one field of a stage's config (here: adding 1 to it, or the other choice)
    changes that stage's hash and the hashes of the stages that read it, and no other."""
    readers = {
        "data": ["data", "pairs"],
        "lm": ["lm", "vlm", "rm"],
        "vision": ["vision", "vlm", "rm"],
        "align": ["vlm", "rm"],
        "rm": ["rm"],
    }
    other = {"pooling": "last", "trainable": "all"}
    base = stage_hashes(ToyBuildConfig())
    for section, changed in readers.items():
        sub = getattr(ToyBuildConfig(), section)
        for f in dataclasses.fields(sub):
            value = other[f.name] if f.name in other else getattr(sub, f.name) + 1
            cfg = ToyBuildConfig(**{section: dataclasses.replace(sub, **{f.name: value})})
            new = stage_hashes(cfg)
            assert [k for k in base if base[k] != new[k]] == changed, f"{section}.{f.name}"


def test_defaults_are_the_documented_build():
    """The command's defaults (README: about 7 minutes on 2 cores) live in one place: the stage configs."""
    cfg = resolve(ToyBuildConfig)
    assert (cfg.lm.steps, cfg.lm.hidden_size, cfg.lm.layers, cfg.lm.lr) == (2000, 96, 2, 3e-3)
    assert (cfg.vision.steps, cfg.vision.hidden_size, cfg.vision.layers) == (80, 96, 3)
    assert (cfg.align.steps, cfg.align.lr, cfg.rm.steps, cfg.rm.pooling) == (
        35,
        1e-3,
        300,
        "logprob",
    )
    assert (cfg.data.train_size, cfg.data.test_size) == (2000, 500)
    for fn in (train_lm, train_vision, warm_up_adapter, train_reward_model):
        params = inspect.signature(fn).parameters.values()
        assert all(p.default is inspect.Parameter.empty for p in params), fn.__name__


@pytest.mark.parametrize(
    "override, message",
    [
        ("lm_steps=3", "unknown config key 'lm_steps'. Valid keys: "),
        ("lm.steps=0", "config field(s) lm.steps must be >= 1"),
        ("rm.pooling=max", "config field 'rm.pooling' expects 'last' | 'logprob'"),
        ("rm.prefix_fraction=2", "config field rm.prefix_fraction must be in [0, 1]"),
    ],
)
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(R1V2Error) as e:
        resolve(ToyBuildConfig, overrides=[override])
    assert message in str(e.value)


def test_lm_is_deterministic_by_seed(tmp_path: Path):
    cfg = LMConfig(steps=2, batch_size=2, hidden_size=32, layers=1, heads=2)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_lm(tmp_path / name, cfg, seed=seed, levels=[1, 2, 3], progress=False)
    a, b, c = (load_file(tmp_path / d / "model.safetensors") for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_lm_example_masks_the_prompt(built: Path):
    """User turn 'scene : empty' -> prompt tokens <|im_start|> user scene : empty <|im_end|>
    <|im_start|> assistant <think> = 9; completion 'i see' + <|im_end|> = 3 tokens."""
    from r1v2.model.tokenizer import load_tokenizer

    tok = load_tokenizer(built / "lm")
    ids, prompt_len = encode_example(tok, "scene : empty", "i see")
    assert prompt_len == 9 and len(ids) == 12
    assert tok.convert_ids_to_tokens(ids[-3:]) == ["i", "see", "<|im_end|>"]
    batch = collate([(ids, prompt_len), ([7, 8, 9], 1)], pad_id=0)
    assert batch["input_ids"].shape == (2, 12)
    assert batch["labels"][0].tolist() == [IGNORE] * 9 + ids[9:]
    assert batch["labels"][1].tolist() == [IGNORE, 8, 9] + [IGNORE] * 9
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * 9


def test_text_turn_and_completion_match_the_policy_format():
    sample = next(iter_samples(1, seed=0))
    assert text_user_turn(sample) == f"{scene_text(sample.scene)} {sample.question.text}"
    assert f"<think> {completion_text(sample)}" == sample.trace


def test_cell_classes():
    """Cell 1 red circle -> 1 + 3*0 + 0 = 1; cell 2 blue triangle -> 1 + 3*2 + 2 = 9; rest 0."""
    scene = Scene.from_any(["redcircle", "bluetriangle"] + ["empty"] * 14)
    assert cell_classes(scene) == [1, 9] + [0] * 14


def test_pixels_equal_the_assembled_processor(built: Path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(built / "vlm")
    images = [render(s.scene) for s in iter_samples(2, seed=1)]
    expected = processor.image_processor(images, return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels(images), expected, atol=1e-5, rtol=0)


def test_align_loss_by_hand():
    """Errors 1 and 3 over 4 elements (two zeros): (1 + 9) / 4 = 2.5."""
    features = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # [1, 2, 2]
    assert align_loss(features, torch.zeros(1, 2, 2)).item() == pytest.approx(2.5)


class _Tokens:
    """Stand-ins for a VLM and its processor with hand-set image tokens: word ``j`` of
    :func:`cell_words` is token id ``j + 3`` with embedding ``(j + 1) * (3, 4)`` (norm
    ``5 (j + 1)``); image ``b`` of a batch gets ``features[b]``."""

    def __init__(self, features):
        self.features = features
        table = torch.full((13, 2), 1000.0)  # rows 0-2: other tokens, far from every cell word
        table[3:] = torch.arange(1, 11, dtype=torch.float32)[:, None] * torch.tensor([3.0, 4.0])
        self.embeddings = torch.nn.Embedding.from_pretrained(table)
        words = cell_words()
        self.tokenizer = SimpleNamespace(
            convert_tokens_to_ids=lambda ws: [words.index(w) + 3 for w in ws]
        )
        self.image_processor = lambda images, return_tensors: SimpleNamespace(
            pixel_values=torch.arange(len(images))
        )

    def get_image_features(self, pixel_values):
        return SimpleNamespace(pooler_output=self.features[pixel_values])

    def get_input_embeddings(self):
        return self.embeddings


def test_alignment_error_by_hand():
    """Two scenes, one shape each, 15 empty cells. Scene 0: its red circle (embedding (3, 4),
    norm 5) read at (3, 6.5): error 2.5 / 5 = 0.5, still nearest its own word; its empty cells
    (embedding (30, 40), norm 50) shifted by (5, 0): error 0.1 each. Scene 1: its red square
    ((6, 8), norm 10) read at (9, 12), the red triangle's embedding: error 5 / 10 = 0.5 and
    nearest the wrong word; its empty cells exact. Shapes 0.5, empty cells (15 x 0.1) / 30 =
    0.05, nearest words 31 of 32."""
    scenes = [Scene.from_any([w] + ["empty"] * 15) for w in ("redcircle", "redsquare")]
    empty = torch.tensor([30.0, 40.0])
    features = empty.repeat(2, 16, 1)  # [2 images, 16 cells, 2]
    features[0, 1:] += torch.tensor([5.0, 0.0])
    features[0, 0] = torch.tensor([3.0, 6.5])
    features[1, 0] = torch.tensor([9.0, 12.0])
    fake = _Tokens(features)
    result = alignment_error(fake, fake, scenes)
    assert result["cells"] == 32
    assert result["object_error"] == pytest.approx(0.5)
    assert result["empty_error"] == pytest.approx(0.05)
    assert result["nearest_word_accuracy"] == pytest.approx(31 / 32)


def test_alignment_error_of_a_built_vlm_is_its_cells_one_by_one(built: Path):
    """The assembled checkpoint's numbers equal a cell-by-cell loop over its image tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(built / "vlm").eval()
    processor = AutoProcessor.from_pretrained(built / "vlm")
    scenes = [s.scene for s in iter_samples(3, seed=4)]
    result = alignment_error(model, processor, scenes)
    table = model.get_input_embeddings().weight.detach()
    words = cell_words()
    word_rows = table[processor.tokenizer.convert_tokens_to_ids(words)]
    errors = {True: [], False: []}
    hits = 0
    for scene in scenes:
        pixel_values = processor.image_processor([render(scene)], return_tensors="pt").pixel_values
        with torch.no_grad():
            tokens = model.get_image_features(pixel_values=pixel_values).pooler_output[0]
        for token, word in zip(tokens, scene.words()):
            target = table[processor.tokenizer.convert_tokens_to_ids(word)]
            errors[word == "empty"].append(float((token - target).norm() / target.norm()))
            hits += words[int(((word_rows - token) ** 2).sum(-1).argmin())] == word
    assert result["cells"] == 48
    assert result["object_error"] == pytest.approx(
        sum(errors[False]) / len(errors[False]), rel=1e-5
    )
    assert result["empty_error"] == pytest.approx(sum(errors[True]) / len(errors[True]), rel=1e-5)
    assert result["nearest_word_accuracy"] == pytest.approx(hits / 48)


def test_cosine_schedule_by_hand():
    """40 steps: warm-up over max(1, 40 // 20) = 2 steps: step 0 -> 1/2, step 1 -> 1; then cosine
    over the 38 other steps down to a tenth: step 20 is halfway ((20 - 2 + 1) / 38 = 1/2), so
    0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55; the last step (39) is at 0.1 + 0 = 0.1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine_schedule(optimizer, 40)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.55) and lrs[39] == pytest.approx(0.1)
    assert all(x > y for x, y in zip(lrs[1:], lrs[2:]))  # decays at every step after warm-up


class _Replay:
    """A stand-in policy answering with fixed completions, in order."""

    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, items, sampling):
        out, self.texts = self.texts[: len(items)], self.texts[len(items) :]
        return SimpleNamespace(texts=out)


def test_evaluate_scores_reference_and_wrong_answers():
    """4 samples: 2 reference completions (right, faithful) and 2 that claim 99 red circles
    with a wrong answer: accuracy 2/4, hallucination rate 2/4."""
    samples = list(iter_samples(4, seed=2))
    wrong = "i see 99 red circles . </think> \\boxed{99}"
    texts = [completion_text(samples[0]), completion_text(samples[1]), wrong, wrong]
    result = evaluate(_Replay(texts), samples, from_image=False, batch_size=3)
    assert result["accuracy"] == 0.5
    assert result["hallucination_rate"] == 0.5
    assert result["n"] == 4


def test_stage_progress_shows_every_number_given():
    """The toy stages use the project's one progress display with keys=None: every finite
    number under its own name (3 significant digits); training keeps its chosen few."""
    from r1v2.train.progress import StepProgress, summary

    assert summary({"loss": 0.123456, "mse": float("nan"), "n": None}, keys=None) == "loss 0.123"
    assert summary({"loss": 2, "reward_mean": 0.5, "other": 1.0}) == "reward 0.5 | loss 2"
    with StepProgress(3, label="LM", enabled=False, keys=None) as bar:
        second = bar.add("judging", 2)
        bar.update(1, {"loss": 1.0})
        bar.update(2, {"mse": 0.5})
        bar.advance(1, task=second)
        assert summary(bar._last[bar._first], keys=None) == "loss 1 | mse 0.5"
