import json

import pytest

from r1v2.errors import R1V2Error
from r1v2.toy.split import split_by_level


def _toy(root, levels):
    (root / "data/train/images").mkdir(parents=True)
    (root / "data/pairs").mkdir(parents=True)
    train, pairs = [], []
    for i, level in enumerate(levels):
        meta = {"level": level}
        train.append(
            {"id": f"s{i}", "images": [f"images/s{i}.png"], "answer": str(i), "metadata": meta}
        )
        pairs.append({"id": f"s{i}", "images": [f"../train/images/s{i}.png"], "metadata": meta})
    for path, rows in (("data/train/samples.jsonl", train), ("data/pairs/pairs.jsonl", pairs)):
        (root / path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_split_keeps_rows_of_their_levels_with_images_where_the_toy_drew_them(tmp_path):
    toy = _toy(tmp_path / "toy", [1, 3, 2, 4, 3])
    got = split_by_level(toy, tmp_path / "d/pairs", tmp_path / "d/pool", [1, 2], [3, 4])
    assert got == {"pairs": 2, "pool": 3}
    pairs = [json.loads(x) for x in (tmp_path / "d/pairs/pairs.jsonl").read_text().splitlines()]
    pool = [json.loads(x) for x in (tmp_path / "d/pool/samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in pairs] == ["s0", "s2"] and [r["id"] for r in pool] == [
        "s1",
        "s3",
        "s4",
    ]
    assert pool[0]["images"] == ["../../toy/data/train/images/s1.png"]  # relative: moves whole
    assert pairs[1]["images"] == ["../../toy/data/train/images/s2.png"]
    assert pool[2]["answer"] == "4" and pool[2]["metadata"] == {"level": 3}


def test_split_refuses_a_toy_without_the_levels_or_their_field(tmp_path):
    toy = _toy(tmp_path / "toy", [1, 2, 3])
    with pytest.raises(R1V2Error, match=r"no pool rows of levels \[4\]"):
        split_by_level(toy, tmp_path / "a", tmp_path / "b", [1, 2], [4])
    for line, n in (('{"id": "x", "metadata": {}}', 1), ('{"metadata": {"level": 3}}\n{"id": ', 2)):
        (toy / "data/train/samples.jsonl").write_text(line + "\n")
        with pytest.raises(R1V2Error, match=rf"samples.jsonl:{n}: field 'metadata.level': missing"):
            split_by_level(toy, tmp_path / "a", tmp_path / "b", [1, 2], [3])
    assert not (tmp_path / "b").exists()  # nothing written before the rows were read
