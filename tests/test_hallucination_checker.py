"""The hallucination checker on hand-written responses about one hand-built scene.

The scene (cells 1-16, row-major)::

     1 redcircle    2 empty      3 bluesquare     4 empty
     5 empty        6 redcircle  7 greentriangle  8 empty
     9 redsquare   10 empty     11 empty         12 bluecircle
    13 empty       14 empty     15 redcircle     16 empty

Counts: red circles 3 (cells 1, 6, 15); red objects 4 (+ red square 9); circles 4 (+ blue
circle 12); squares 2 (3, 9); blue squares 1; green triangles 1; green circles 0; objects 7.
"""

import math

import pytest
from fixtures.scenes import SCENE, WORDS

from r1v2.data.synthetic import Claim, claims, hallucination_rate, hallucinations


def _summary(found: list[Claim]) -> list[tuple[str, str, str, bool]]:
    return [(c.subject, c.claimed, c.truth, c.holds) for c in found]


@pytest.mark.parametrize(
    "response, expected",
    [
        ("i see 3 red circles .", [("red circles", "3", "3", True)]),
        ("I SEE 3 RED CIRCLES.", [("red circles", "3", "3", True)]),
        ("i see three red circles", [("red circles", "3", "3", True)]),
        ("i can see 1 blue square", [("blue squares", "1", "1", True)]),
        ("there are 4 red objects", [("red objects", "4", "4", True)]),
        ("there are 7 objects", [("objects", "7", "7", True)]),
        ("there is a green triangle", [("green triangles", "at least 1", "1", True)]),
        ("there is no green circle .", [("green circles", "0", "0", True)]),
        ("there are no blue triangles", [("blue triangles", "0", "0", True)]),
        ("i see 0 green squares", [("green squares", "0", "0", True)]),
        ("i don't see any green circles", [("green circles", "0", "0", True)]),
        # the reference traces' tally form: kind (a cell word or a group), colon, number
        (
            "redcircle : 3 , redsquare : 1 , redtriangle : 0 . 3 + 1 + 0 = 4 . red objects : 4 .",
            [
                ("red circles", "3", "3", True),
                ("red squares", "1", "1", True),
                ("red triangles", "0", "0", True),
                ("red objects", "4", "4", True),
            ],
        ),
        ("circles : four", [("circles", "4", "4", True)]),
        # per-kind counts written as cell words after "i see"
        (
            "i see 3 redcircle , 1 redsquare , 0 redtriangle .",
            [
                ("red circles", "3", "3", True),
                ("red squares", "1", "1", True),
                ("red triangles", "0", "0", True),
            ],
        ),
        (
            "there are 4 circles and 2 squares",
            [("circles", "4", "4", True), ("squares", "2", "2", True)],
        ),
        # groups sharing one number are counted together: 3 red circles + 1 blue square = 4
        (
            "there are 4 red circles and blue squares in total",
            [("red circles and blue squares", "4", "4", True)],
        ),
        ("cell 1 is a red circle", [("cell 1", "red circle", "red circle", True)]),
        ("cell 12 has a circle", [("cell 12", "circle", "blue circle", True)]),
        ("cell 2 is empty", [("cell 2", "empty", "empty", True)]),
    ],
)
def test_true_claims(response, expected):
    found = claims(response, SCENE)
    assert _summary(found) == expected
    assert hallucinations(response, SCENE) == []


@pytest.mark.parametrize(
    "response, expected",
    [
        # wrong count: 3 red circles, not 2
        ("i see 2 red circles .", ("red circles", "2", "3")),
        ("redcircle : 2 .", ("red circles", "2", "3")),
        ("squares : 3 .", ("squares", "3", "2")),
        ("there are five circles", ("circles", "5", "4")),
        # an absent object claimed present
        ("there is a green circle", ("green circles", "at least 1", "0")),
        ("i see 1 blue triangle", ("blue triangles", "1", "0")),
        # "there is no X" when X exists (cell 3 holds a blue square)
        ("there is no blue square", ("blue squares", "0", "1")),
        ("i do not see any red squares", ("red squares", "0", "1")),
        # per-cell claims: cell 2 is empty, cell 7 holds a green triangle, no cell 17
        ("cell 2 is a red circle", ("cell 2", "red circle", "empty")),
        ("cell 7 is empty", ("cell 7", "empty", "green triangle")),
        ("cell 17 is empty", ("cell 17", "empty", "no such cell")),
    ],
)
def test_false_claims(response, expected):
    bad = hallucinations(response, SCENE)
    assert [(c.subject, c.claimed, c.truth) for c in bad] == [expected]
    assert not bad[0].holds


@pytest.mark.parametrize(
    "response",
    [
        "",
        "how many red circles are there ?",
        "are there more red circles than blue squares ?",
        "there are 2 more red circles than squares",  # a comparison, not a count
        "3 + 1 = 4 . 4 is option C . </think> \\boxed{C}",
        "i see . </think> \\boxed{3}",
        "scene : redcircle empty how many circles ? options : A 2 , B 3",
    ],
)
def test_no_claims(response):
    assert claims(response, SCENE) == []


def test_spans_point_at_the_claims():
    response = (
        "<think> i see 3 red circles and 1 blue square . cell 2 is empty . </think> \\boxed{4}"
    )
    found = claims(response, SCENE)
    assert [c.text for c in found] == ["3 red circles", "1 blue square", "cell 2 is empty"]
    assert all(response[c.start : c.end] == c.text for c in found)


def test_mixed_response_keeps_only_the_false_claims():
    """3 red circles (true), 3 squares (false: 2), a green circle (false: none), 1 blue square (true)."""
    response = "i see 3 red circles , 3 squares and a green circle . there is 1 blue square ."
    assert [(c.subject, c.holds) for c in claims(response, SCENE)] == [
        ("red circles", True),
        ("squares", False),
        ("green circles", False),
        ("blue squares", True),
    ]
    assert [c.text for c in hallucinations(response, SCENE)] == ["3 squares", "a green circle"]


def test_whole_response_is_read():
    """A false claim after </think> counts as much as one inside the reasoning."""
    response = "<think> i see 3 red circles . </think> i see 5 red circles \\boxed{3}"
    assert [c.claimed for c in hallucinations(response, SCENE)] == ["5"]


def test_scene_forms_agree():
    """A Scene, the stored word list, [colour, shape] pairs and the metadata dict give the same claims."""
    pairs = [None if w == "empty" else _pair(w) for w in WORDS]
    response = "i see 2 red circles . cell 3 is a blue square . there is no green circle"
    expected = _summary(claims(response, SCENE))
    assert expected == [
        ("red circles", "2", "3", False),
        ("cell 3", "blue square", "blue square", True),
        ("green circles", "0", "0", True),
    ]
    for form in (WORDS, pairs, {"scene": WORDS, "grid": 4}):
        assert _summary(claims(response, form)) == expected


def _pair(word: str) -> list[str]:
    for colour in ("red", "green", "blue"):
        if word.startswith(colour):
            return [colour, word[len(colour) :]]
    raise AssertionError(word)


def test_hallucination_rate():
    """Responses: true claim, false claim, no claim -> 1 of 3 hallucinate."""
    responses = ["i see 3 red circles", "i see 9 red circles", "the answer is 4"]
    assert hallucination_rate(responses, [SCENE] * 3) == pytest.approx(1 / 3)
    assert math.isnan(hallucination_rate([], []))
    with pytest.raises(ValueError, match="2 completions but 1 scenes"):
        hallucination_rate(responses[:2], [SCENE])
