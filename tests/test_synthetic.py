"""The synthetic task: scenes, rendering, questions, answers, traces, the generator and the CLI.

Hand-built scene used below (cells 1-16, row-major)::

     1 redcircle    2 empty      3 bluesquare     4 empty
     5 empty        6 redcircle  7 greentriangle  8 empty
     9 redsquare   10 empty     11 empty         12 bluecircle
    13 empty       14 empty     15 redcircle     16 empty

Counts: red circles 3 (1, 6, 15); red squares 1 (9); red objects 3 + 1 + 0 = 4; blue circle 1
(12), blue square 1 (3): blue objects 2; green triangle 1 (7): green objects 1; circles 3 red +
1 blue = 4; squares 1 blue + 1 red = 2; blue squares 1; green triangles 1.
"""

import hashlib
import json
import random
from pathlib import Path

import pytest
from fixtures.scenes import SCENE, WORDS

from r1v2.cli import main
from r1v2.data.synthetic import (
    Group,
    Question,
    Scene,
    SceneError,
    claims,
    generate,
    iter_samples,
    lm_text,
    make_question,
    reference_trace,
    render,
    sample_scene,
    scene_text,
    vocabulary,
)
from r1v2.data.synthetic.render import RGB
from r1v2.model.policy import format_question

RED_CIRCLES, RED, BLUE, GREEN = Group("red", "circle"), Group("red"), Group("blue"), Group("green")
CIRCLES, SQUARES = Group(shape="circle"), Group(shape="square")
BLUE_SQUARES, GREEN_TRIANGLES = Group("blue", "square"), Group("green", "triangle")
BLUE_CIRCLES = Group("blue", "circle")


# --- scenes and rendering -------------------------------------------------------------------


def test_scene_text_is_one_word_per_cell_in_row_major_order():
    assert scene_text(SCENE) == "scene : " + " ".join(WORDS)
    assert SCENE.words() == WORDS
    assert RED_CIRCLES.cells(SCENE) == [1, 6, 15]
    assert CIRCLES.cells(SCENE) == [1, 6, 12, 15]


def test_scene_forms():
    pairs = [None if w == "empty" else [w[: -len(s)], s] for w in WORDS for s in [_shape(w)]]
    assert Scene.from_any(pairs) == SCENE
    assert Scene.from_any({"scene": WORDS, "grid": 4}) == SCENE
    with pytest.raises(SceneError, match="got 3 cells"):
        Scene.from_any(WORDS[:3])
    with pytest.raises(SceneError, match="a 4x4 scene has 16 cells, got 9"):
        Scene.from_any({"scene": WORDS[:9], "grid": 4})
    with pytest.raises(SceneError, match="'purplecircle'"):
        Scene.from_any(["purplecircle", *WORDS[1:]])


def _shape(word: str) -> str:
    return next((s for s in ("circle", "square", "triangle") if word.endswith(s)), "")


def test_render_puts_each_object_in_its_own_16px_cell():
    """Cell k spans x in [16*col, 16*col + 15], y in [16*row, 16*row + 15]; shapes keep a 2 px margin.

    Square: its corner pixel (+2, +2) is filled. Circle: that corner is background, the middle
    of its left edge (+2, +8) filled. Triangle (apex up): top-left corner background,
    bottom-left corner (+2, +13) filled. Empty cells are background throughout.
    """
    image = render(SCENE)
    assert image.size == (64, 64) and image.mode == "RGB"
    px = image.load()
    white = (255, 255, 255)
    for k, word in enumerate(WORDS):
        x, y = 16 * (k % 4), 16 * (k // 4)
        block = {px[x + i, y + j] for i in range(16) for j in range(16)}
        if word == "empty":
            assert block == {white}
            continue
        colour = RGB[word[: -len(_shape(word))]]
        assert block == {white, colour}
        assert px[x + 8, y + 8] == colour
        shape = _shape(word)
        corner, left_mid, bottom_left = px[x + 2, y + 2], px[x + 2, y + 8], px[x + 2, y + 13]
        if shape == "square":
            assert corner == colour
        elif shape == "circle":
            assert (corner, left_mid) == (white, colour)
        else:
            assert (corner, bottom_left) == (white, colour)
    assert render(SCENE).tobytes() == image.tobytes()
    assert render(SCENE, image_size=128).size == (128, 128)


def test_sample_scene_object_counts_by_level():
    rng = random.Random(0)
    for level, (lo, hi) in {1: (3, 10), 2: (3, 9), 3: (3, 8), 4: (4, 8)}.items():
        counts = {sum(c is not None for c in sample_scene(rng, level).cells) for _ in range(300)}
        assert min(counts) == lo and max(counts) == hi


# --- questions, answers, traces on the hand-built scene --------------------------------------


@pytest.mark.parametrize(
    "question, text, answer, trace",
    [
        (
            Question("count", (RED_CIRCLES,)),
            "how many red circles are there ?",
            "3",
            "<think> redcircle : 3 . </think> \\boxed{3}",
        ),
        (
            Question("count", (RED,)),
            "how many red objects are there ?",
            "4",
            "<think> redcircle : 3 , redsquare : 1 , redtriangle : 0 . 3 + 1 + 0 = 4 . "
            "red objects : 4 . </think> \\boxed{4}",
        ),
        (
            Question("sum", (RED_CIRCLES, BLUE_SQUARES)),
            "how many red circles and blue squares are there in total ?",
            "4",  # 3 + 1
            "<think> redcircle : 3 . bluesquare : 1 . 3 + 1 = 4 . </think> \\boxed{4}",
        ),
        (
            Question("diff", (CIRCLES, SQUARES)),
            "how many more circles than squares are there ?",
            "2",  # 4 - 2
            "<think> redcircle : 3 , greencircle : 0 , bluecircle : 1 . 3 + 0 + 1 = 4 . "
            "circles : 4 . redsquare : 1 , greensquare : 0 , bluesquare : 1 . 1 + 0 + 1 = 2 . "
            "squares : 2 . 4 - 2 = 2 . </think> \\boxed{2}",
        ),
        (
            Question("compare", (BLUE, GREEN), ("yes", "no")),
            "are there more blue objects than green objects ? options : A yes , B no",
            "A",  # 2 > 1: yes, option A
            "<think> bluecircle : 1 , bluesquare : 1 , bluetriangle : 0 . 1 + 1 + 0 = 2 . "
            "blue objects : 2 . greencircle : 0 , greensquare : 0 , greentriangle : 1 . "
            "0 + 0 + 1 = 1 . green object : 1 . 2 is more than 1 . yes is option A . "
            "</think> \\boxed{A}",
        ),
        (
            Question("compare", (GREEN_TRIANGLES, BLUE_SQUARES), ("yes", "no")),
            "are there more green triangles than blue squares ? options : A yes , B no",
            "B",  # 1 > 1 is false: no, option B
            "<think> greentriangle : 1 . bluesquare : 1 . 1 is not more than 1 . "
            "no is option B . </think> \\boxed{B}",
        ),
        (
            Question("sum3", (RED_CIRCLES, BLUE_SQUARES, GREEN_TRIANGLES), ("4", "6", "5", "2")),
            "how many red circles , blue squares and green triangles are there in total ? "
            "options : A 4 , B 6 , C 5 , D 2",
            "C",  # 3 + 1 + 1 = 5, option C
            "<think> redcircle : 3 . bluesquare : 1 . greentriangle : 1 . "
            "3 + 1 = 4 . 4 + 1 = 5 . 5 is option C . </think> \\boxed{C}",
        ),
        (
            Question("addsub", (RED_CIRCLES, BLUE_SQUARES, GREEN_TRIANGLES)),
            "what is red circles plus blue squares minus green triangles ?",
            "3",  # 3 + 1 - 1
            "<think> redcircle : 3 . bluesquare : 1 . greentriangle : 1 . "
            "3 + 1 = 4 . 4 - 1 = 3 . </think> \\boxed{3}",
        ),
        (
            Question("sum4", (RED_CIRCLES, BLUE_SQUARES, GREEN_TRIANGLES, BLUE_CIRCLES)),
            "how many red circles , blue squares , green triangles and blue circles are there "
            "in total ?",
            "6",  # 3 + 1 + 1 + 1
            "<think> redcircle : 3 . bluesquare : 1 . greentriangle : 1 . bluecircle : 1 . "
            "3 + 1 = 4 . 4 + 1 = 5 . 5 + 1 = 6 . </think> \\boxed{6}",
        ),
        (
            Question("addsub4", (RED_CIRCLES, BLUE, GREEN_TRIANGLES, Group("red", "square"))),
            "what is red circles plus blue objects plus green triangles minus red squares ?",
            "5",  # 3 + 2 + 1 - 1
            "<think> redcircle : 3 . bluecircle : 1 , bluesquare : 1 , bluetriangle : 0 . "
            "1 + 1 + 0 = 2 . blue objects : 2 . greentriangle : 1 . redsquare : 1 . "
            "3 + 2 = 5 . 5 + 1 = 6 . 6 - 1 = 5 . </think> \\boxed{5}",
        ),
    ],
)
def test_hand_built_questions(question, text, answer, trace):
    assert question.text == text
    assert question.answer(SCENE) == answer
    assert reference_trace(SCENE, question) == trace
    assert Question.from_dict(question.to_dict()) == question


def test_trace_claims_are_the_counts_it_states():
    """'red objects' = red circles 3 + red squares 1 + red triangles 0, then the total 4."""
    trace = reference_trace(SCENE, Question("count", (RED,)))
    found = claims(trace, SCENE)
    assert [(c.subject, c.claimed) for c in found] == [
        ("red circles", "3"),
        ("red squares", "1"),
        ("red triangles", "0"),
        ("red objects", "4"),
    ]
    assert all(c.holds for c in found)


# --- random questions and traces --------------------------------------------------------------


@pytest.fixture(scope="module")
def many():
    return list(iter_samples(1500, seed=3, choice_fraction=0.5))


def test_random_questions_are_well_formed(many):
    levels = {1: 0, 2: 0, 3: 0}
    for s in many:
        q, scene = s.question, s.scene
        levels[q.level] += 1
        assert len(q.groups) == q.level
        assert not any(a.overlaps(b) for i, a in enumerate(q.groups) for b in q.groups[i + 1 :])
        value = q.value(scene)
        counts = [g.count(scene) for g in q.groups]
        if q.qtype == "compare":
            assert q.options == ("yes", "no")
            assert value == ("yes" if counts[0] > counts[1] else "no")
        else:
            assert 0 <= int(value) <= 16
        if q.options:
            assert len(set(q.options)) == len(q.options)
            assert q.options["ABCD".index(s.answer)] == value
            assert q.kind == "choice"
        else:
            assert s.answer == value and q.kind == "math" and q.qtype != "compare"
    assert levels == {1: 500, 2: 500, 3: 500}  # levels cycle 1, 2, 3


def test_traces_hold_only_true_claims_and_every_count_is_read(many):
    """Each tally 'G : N' of a trace is read: one claim for a single kind, and for a
    colour/shape group one per kind (3) plus the total."""
    for s in many:
        found = claims(s.trace, s.scene)
        assert found and all(c.holds for c in found)
        expected = sum(1 if g.colour and g.shape else 4 for g in s.question.groups)
        assert len(found) == expected
        assert s.trace.count(" : ") == expected


def test_difficulty_grows_with_level(many):
    """Reasoning steps (counts + operations) are 1, 3, 5; claims and trace length grow too."""
    by_level = {1: [], 2: [], 3: []}
    for s in many:
        meta = s.metadata()
        assert meta["steps"] == {1: 1, 2: 3, 3: 5}[meta["level"]]
        by_level[meta["level"]].append((len(claims(s.trace, s.scene)), len(s.trace.split())))
    mean = {lv: [sum(x) / len(x) for x in zip(*rows)] for lv, rows in by_level.items()}
    assert mean[1][0] < mean[2][0] < mean[3][0]
    assert mean[1][1] < mean[2][1] < mean[3][1]


def test_vocabulary_covers_every_text(many):
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab))
    needed = {"<think>", "</think>", "\\boxed{0}", "\\boxed{16}", "\\boxed{D}", "redcircle"}
    assert needed <= set(vocab)
    for s in many:
        assert set(lm_text(s.scene, s.question).split()) <= set(vocab)
        # the policy's user turn lists the options again as "A. 2" lines
        assert set(format_question(s.question.text, s.question.options).split()) <= set(vocab)


def test_word_tokenizer_reads_texts_without_unknowns(many):
    from r1v2.toy.tokenizer import word_tokenizer

    tok = word_tokenizer(vocabulary())
    for s in many[:100]:
        text = lm_text(s.scene, s.question)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == text.split()  # one id per word, none unknown
        assert tok.unk_token_id not in ids


def test_reference_completions_score_full_reward(many):
    """The completion form of a trace (after the prompt's <think>) is correct and well formatted."""
    from r1v2.rewards import accuracy_reward, format_reward

    for s in many[:60]:
        completion = s.trace.removeprefix("<think> ")
        choices = list(s.question.options) if s.question.options else None
        assert accuracy_reward(completion, s.answer, choices=choices) == 1.0
        assert format_reward(completion) == 1.0


def test_make_question_compare_only_with_choice():
    rng = random.Random(1)
    scene = sample_scene(rng, 2)
    assert {make_question(rng, scene, 2).qtype for _ in range(200)} == {"sum", "diff"}
    assert {make_question(rng, scene, 2, choice=True).qtype for _ in range(200)} == {
        "sum",
        "diff",
        "compare",
    }
    with pytest.raises(ValueError, match="level 5"):
        make_question(rng, scene, 5)


def test_level_4_is_drawn_only_when_asked_and_its_traces_hold():
    """Four disjoint groups, 7 steps, the smallest group subtracted, every claim true; the
    default levels stay 1-3 (the data of a default run does not change)."""
    from r1v2.rewards import accuracy_reward

    assert {s.question.level for s in iter_samples(30, seed=0)} == {1, 2, 3}
    samples = list(iter_samples(300, seed=5, levels=[4], choice_fraction=0.3))
    assert {s.question.qtype for s in samples} == {"sum4", "addsub4"}
    for s in samples:
        q, groups = s.question, s.question.groups
        assert len(groups) == 4 and s.metadata()["steps"] == 7
        assert not any(a.overlaps(b) for i, a in enumerate(groups) for b in groups[i + 1 :])
        counts = [g.count(s.scene) for g in groups]
        if q.qtype == "addsub4":
            assert counts[3] == min(counts) and int(q.value(s.scene)) == sum(counts) - 2 * counts[3]
        else:
            assert int(q.value(s.scene)) == sum(counts)
        assert all(c.holds for c in claims(s.trace, s.scene))
        assert accuracy_reward(s.trace.removeprefix("<think> "), s.answer, choices=q.options) == 1.0


# --- generator, loader, CLI -------------------------------------------------------------------


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_generate_is_deterministic(tmp_path):
    paths = [generate(30, seed, tmp_path / name) for seed, name in [(0, "a"), (0, "b"), (1, "c")]]
    a, b, c = (p.parent for p in paths)
    assert _digest(a) == _digest(b)
    assert (a / "samples.jsonl").read_bytes() == (b / "samples.jsonl").read_bytes()
    assert (a / "samples.jsonl").read_bytes() != (c / "samples.jsonl").read_bytes()
    assert _digest(a) != _digest(c)
    assert len(list((a / "images").glob("*.png"))) == 30
    # sample i does not depend on n: a 10-sample run is the first 10 lines of the 30-sample one
    short = generate(10, 0, tmp_path / "d")
    assert short.read_text().splitlines() == paths[0].read_text().splitlines()[:10]


def test_generated_rows_and_loader(tmp_path):
    from r1v2.data.loaders import load_samples

    path = generate(24, 5, tmp_path, choice_fraction=0.5, levels=[2, 3])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"synth-s5-{i:06d}" for i in range(24)]
    for line in path.read_text().splitlines():
        assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
    loaded = load_samples(path).samples
    assert [s.id for s in loaded] == [r["id"] for r in rows]
    for sample, row in zip(loaded, rows):
        assert set(row) == {"id", "question", "images", "answer", "choices", "kind", "metadata"}
        assert sample.images == (tmp_path / row["images"][0],)
        assert sample.answer == row["answer"] and sample.kind == row["kind"]
        meta = sample.metadata
        assert meta["level"] in (2, 3)
        scene = Scene.from_any(meta)
        question = Question(
            meta["qtype"], tuple(Group.from_dict(g) for g in meta["groups"]), sample.choices
        )
        assert question.text == sample.question
        assert question.answer(scene) == sample.answer
        assert meta["trace"] == reference_trace(scene, question)
        assert sample.open_images()[0].tobytes() == render(scene).tobytes()


def test_cli_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "synth")
    assert main(["data", "synth", "--out", out, "--n", "20", "--seed", "0"]) == 0
    assert "wrote 20 samples" in capsys.readouterr().out
    lines = (tmp_path / "synth" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 20
    assert len(list((tmp_path / "synth" / "images").glob("*.png"))) == 20
    first = (tmp_path / "synth" / "samples.jsonl").read_bytes()
    # an existing output is kept unless overwrite is asked for
    assert main(["data", "synth", "--out", out, "--n", "5"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["data", "synth", f"out={out}", "n=20", "seed=0", "overwrite=true"]) == 0
    assert (tmp_path / "synth" / "samples.jsonl").read_bytes() == first
    assert main(["data", "synth", "--out", out, "levels=[5]", "overwrite=true"]) == 2
    assert "levels" in capsys.readouterr().err
