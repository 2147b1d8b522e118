"""MPO pairs: the repetition rule, the rule checks, the pair builder, and offline pairs files."""

from __future__ import annotations

import json
import math
import random

import pytest
from PIL import Image

from r1v2.data.pairs import PreferenceRecord, is_pairs_data, load_pairs, write_pairs
from r1v2.data.schema import DataError
from r1v2.data.synthetic import iter_samples
from r1v2.toy.reward import completion, repetitive_response
from r1v2.train.pairs import (
    RepeatConfig,
    is_repetitive,
    repeated_share,
    rule_checks,
    select_pair,
)

# ---- the repetition rule -------------------------------------------------------------------------


def test_repeated_share_hand_values():
    """A 5-word span three times in a row, then one word: the two later copies are 10 of the
    16 words (0.625). Twice in a row is no repeat with min_copies=3; a 3-word span is shorter
    than min_span=4."""
    assert repeated_share("a b c d . a b c d . a b c d . end") == pytest.approx(10 / 16)
    assert repeated_share("a b c d . a b c d . end") == 0.0
    assert repeated_share("a b c d . a b c d . end", min_copies=2) == pytest.approx(5 / 11)
    assert repeated_share("a b . a b . a b . a b . x") == 0.0  # period 3 < min_span 4
    assert repeated_share("a b . a b . a b . a b . x", min_span=3) == pytest.approx(9 / 13)
    assert repeated_share("") == 0.0
    # 2.5 copies are not 3; past 3 copies a trailing partial copy counts: 4 + 4 + 2 of 14
    assert repeated_share("w x y z w x y z w x") == 0.0
    assert repeated_share("w x y z w x y z w x y z w x") == pytest.approx(10 / 14)


def test_repetition_rule_catches_toy_repetitive_responses_and_spares_faithful_traces():
    """Over 1500 synthetic samples: no reference trace is repetitive, every toy repetitive
    response (a sentence or two repeated 3-5 times) is, under the default rule."""
    rng = random.Random(0)
    samples = list(iter_samples(1500, seed=7))
    faithful = [completion(s.scene, s) for s in samples]
    repetitive = [repetitive_response(t, rng) for t in faithful]
    assert not any(is_repetitive(t) for t in faithful)
    assert all(is_repetitive(t) for t in repetitive)
    # min_copies=2 would flag correct traces that state one sum twice in a row
    twice = "redcircle : 3 . bluesquare : 0 . greentriangle : 0 . 3 + 0 = 3 . 3 + 0 = 3 . </think> \\boxed{3}"
    assert not is_repetitive(twice)
    assert is_repetitive(twice, RepeatConfig(min_copies=2))
    # max_share bounds how much repetition a long response may carry
    loop = "redcircle : 3 . " * 3 + " ".join(f"w{i}" for i in range(200))
    assert repeated_share(loop) == pytest.approx(8 / 212)
    assert not is_repetitive(loop) and is_repetitive(loop, RepeatConfig(max_share=0.03))


def test_rule_checks():
    good = "redcircle : 3 . </think> \\boxed{3}"
    assert rule_checks(good, "3") == {"accuracy": True, "format": True, "repetition": True}
    assert rule_checks(good, "4")["accuracy"] is False
    no_close = "redcircle : 3 . \\boxed{3}"  # no </think>: no answer after it, bad format
    assert rule_checks(no_close, "3") == {"accuracy": False, "format": False, "repetition": True}
    assert rule_checks(no_close, "3", after_think=False)["accuracy"] is True
    looped = "redcircle : 3 . redcircle : 3 . redcircle : 3 . </think> \\boxed{3}"
    assert rule_checks(looped, "3")["repetition"] is False
    assert rule_checks(good, "Z", choices=["1", "3"])["accuracy"] is False  # unscorable: fails
    assert rule_checks(good, "3", rules=["format"]) == {"format": True}
    assert rule_checks(good, "3", rules=[]) == {}
    with pytest.raises(ValueError, match="unknown rule"):
        rule_checks(good, "3", rules=["style"])


# ---- the pair builder ----------------------------------------------------------------------------


def test_select_pair_picks_best_valid_and_lowest_overall():
    """Scores [1, 5, 3, 5], passes [T, F, T, T]: candidate 1 scores 5 but fails a rule, so the
    chosen is 3 (5); the rejected is 0 (1), which passes the rules itself; gap 4."""
    d = select_pair([1.0, 5.0, 3.0, 5.0], [True, False, True, True], threshold=2.0)
    assert (d.chosen, d.rejected, d.gap, d.kept, d.reason) == (3, 0, 4.0, True, "kept")


def test_select_pair_threshold_is_inclusive():
    """gap = 7.5 - 0.5 = 7.0: kept at threshold 7, not at 7.01."""
    scores, passes = [0.5, 7.5], [False, True]
    assert select_pair(scores, passes, 7.0).kept
    d = select_pair(scores, passes, 7.01)
    assert (d.chosen, d.rejected, d.kept, d.reason, d.built) == (
        1,
        0,
        False,
        "below_threshold",
        True,
    )


def test_select_pair_ties_go_to_the_lower_index():
    """Chosen ties (2 and 4 both score 9 and pass) -> 2; rejected ties (0 and 3 both -1) -> 0."""
    d = select_pair([-1.0, 2.0, 9.0, -1.0, 9.0], [False, True, True, True, True], 0.0)
    assert (d.chosen, d.rejected) == (2, 0)
    # all equal: chosen 0, rejected the first other one; the gap 0 passes threshold 0 only
    assert (
        select_pair([1.0] * 3, [True] * 3, 0.0).chosen,
        select_pair([1.0] * 3, [True] * 3, 0.0).rejected,
    ) == (0, 1)
    assert not select_pair([1.0] * 3, [True] * 3, 0.1).kept


def test_select_pair_without_a_valid_pair():
    d = select_pair([3.0, 1.0, 2.0], [False, False, False], 0.0)
    assert (d.chosen, d.rejected, d.kept, d.reason, d.built) == (
        None,
        None,
        False,
        "no_valid_chosen",
        False,
    )
    assert math.isnan(d.gap)
    # the only valid candidate is also the lowest-scoring one: a negative gap, no pair
    d = select_pair([1.0, 4.0], [True, False], 0.0)
    assert (d.chosen, d.rejected, d.gap, d.kept) == (0, 1, -3.0, False)
    # one candidate, or a reward model that failed on the others
    assert select_pair([2.0], [True], 0.0).reason == "no_rejected"
    d = select_pair([2.0, math.nan, None], [True, True, True], 0.0)
    assert d.reason == "no_rejected" and d.chosen == 0
    # a non-finite score takes neither role
    d = select_pair([math.inf, 3.0, -math.inf, 1.0], [True, True, False, False], 0.0)
    assert (d.chosen, d.rejected, d.gap) == (1, 3, 2.0)
    with pytest.raises(ValueError, match="2 scores but 1"):
        select_pair([1.0, 2.0], [True], 0.0)


# ---- offline pairs files -------------------------------------------------------------------------


def _png(path, colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [
    {"image": "img/a.png", "question": "how many ?", "chosen": "c1", "rejected": "r1"},
    {
        "id": "x",
        "images": ["img/a.png", "img/b.png"],
        "question": "q",
        "chosen": "c2",
        "rejected": "r2",
        "choices": ["1", "2"],
        "metadata": {"score": 3},
    },
    {"question": "text only", "chosen": "c3", "rejected": "r3", "image": None},
]


def test_load_pairs_mmpr_layout(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png", (0, 0, 200))
    file = _write(tmp_path / "pairs.jsonl", GOOD)
    result = load_pairs(file)
    a, b, c = result.pairs
    assert a.id == "pairs.jsonl:1" and a.images == ((tmp_path / "img" / "a.png").absolute(),)
    assert (b.id, b.choices, b.metadata, len(b.images)) == ("x", ("1", "2"), {"score": 3}, 2)
    assert c.images == () and c.choices is None and c.metadata == {}
    assert a.open_images()[0].size == (16, 16)
    assert result.rows == 3 and not result.skipped
    assert is_pairs_data(file) and is_pairs_data(tmp_path)
    samples = _write(
        tmp_path / "s" / "s.jsonl", [{"id": "1", "question": "q", "answer": "1", "kind": "open"}]
    )
    assert not is_pairs_data(samples)


BAD = [
    ("{not json", "pairs.jsonl:2: malformed JSON"),
    (
        {"question": "q", "chosen": "c"},
        "pairs.jsonl:3: field 'rejected': required field is missing",
    ),
    (
        {"question": "q", "chosen": "c", "rejected": "r", "answer": "1"},
        "pairs.jsonl:4: field 'answer': unknown field",
    ),
    (
        {"question": "q", "chosen": "", "rejected": "r"},
        "pairs.jsonl:5: field 'chosen': must not be empty",
    ),
    (
        {"question": "q", "chosen": "c", "rejected": "r", "image": "img/missing.png"},
        "pairs.jsonl:6: field 'image': file not found: img/missing.png",
    ),
    (
        {"question": "q", "chosen": "c", "rejected": "r", "images": ["img/a.png", 3]},
        "pairs.jsonl:7: field 'images[1]': expected an image path, got number",
    ),
    (
        {"question": "q", "chosen": "c", "rejected": "r", "image": "img/a.png", "images": []},
        "pairs.jsonl:8: field 'images': give 'image' or 'images', not both",
    ),
    (
        {"id": "x", "question": "q", "chosen": "c", "rejected": "r"},
        "pairs.jsonl:9: field 'id': duplicate id 'x'",
    ),
    (
        {"question": "q", "chosen": "c", "rejected": "r", "choices": []},
        "pairs.jsonl:10: field 'choices'",
    ),
]


@pytest.mark.parametrize("row, message", BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_load_pairs_bad_line_is_an_error_naming_file_line_field(tmp_path, row, message):
    """Line 1 holds id 'x'; the lines before the bad one are valid; the error names the file,
    the bad line and its field."""
    _png(tmp_path / "img" / "a.png")
    number = int(message.split(":")[1])
    filler = {"question": "q", "chosen": "c", "rejected": "r"}
    first = {"id": "x", **filler}
    file = _write(tmp_path / "pairs.jsonl", [first, *[filler] * (number - 2), row])
    with pytest.raises(DataError) as info:
        load_pairs(file)
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_load_pairs_skip_counts_bad_rows(tmp_path):
    _png(tmp_path / "img" / "a.png")
    rows = [
        GOOD[0],
        *(r for r, _ in BAD),
        GOOD[2],
        {"id": "x", "question": "q", "chosen": "c", "rejected": "r"},
    ]
    result = load_pairs(_write(tmp_path / "pairs.jsonl", rows), on_bad="skip")
    # BAD's row with id 'x' (line 9) is the first 'x' here, so line 12 is the duplicate
    assert [p.id for p in result.pairs] == ["pairs.jsonl:1", "x", "pairs.jsonl:11"]
    assert result.rows == 12 and len(result.skipped) == 9
    reasons = result.skipped_by_reason()
    assert reasons["missing field"] == [f"{tmp_path / 'pairs.jsonl'}:3"]
    assert reasons["unknown field"] == [f"{tmp_path / 'pairs.jsonl'}:4"]
    assert "skipped 9" in result.summary()


def test_write_pairs_round_trips_with_relative_images(tmp_path):
    image = _png(tmp_path / "data" / "img" / "a.png")
    pairs = [
        PreferenceRecord(
            "p1",
            "how many ?",
            "chosen one",
            "rejected one",
            images=(image,),
            choices=("1", "2"),
            metadata={"answer": "1", "chosen_score": -0.5},
        ),
        PreferenceRecord("p2", "text", "c", "r"),
    ]
    out = write_pairs(pairs, tmp_path / "out" / "pairs.jsonl")
    first = json.loads(out.read_text().splitlines()[0])
    assert first["images"] == ["../data/img/a.png"]
    assert set(first) == {"id", "question", "images", "chosen", "rejected", "choices", "metadata"}
    assert load_pairs(out).pairs == pairs


def test_load_pairs_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _png(tmp_path / "img" / "a.png")
    table = pa.table(
        {
            "image": ["img/a.png", None],
            "question": ["q1", "q2"],
            "chosen": ["c1", "c2"],
            "rejected": ["r1", ""],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    with pytest.raises(DataError, match=r"pairs.parquet:2: field 'rejected': must not be empty"):
        load_pairs(tmp_path / "pairs.parquet")
    result = load_pairs(tmp_path / "pairs.parquet", on_bad="skip")
    assert [p.question for p in result.pairs] == ["q1"] and is_pairs_data(
        tmp_path / "pairs.parquet"
    )
