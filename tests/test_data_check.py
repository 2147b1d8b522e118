"""`r1v2 data check` end to end, and the numbers it prints."""

import io
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1v2.cli import main
from r1v2.data import load_samples
from r1v2.data.check import describe

ROWS = [
    {"id": "a", "question": "q1", "images": ["img/a.png"], "answer": "1", "kind": "math"},
    {
        "id": "b",
        "question": "q2",
        "images": ["img/b.png", "img/c.jpg"],
        "answer": "A",
        "choices": ["1", "2"],
        "kind": "choice",
    },
    {"id": "c", "question": "q3", "answer": "2", "kind": "math"},
    {"id": "d", "question": "q4", "images": ["img/a.png"], "answer": "3", "kind": "math"},
]


@pytest.fixture
def data(tmp_path):
    """train.jsonl (ROWS) with a.png 10x20, b.png 30x40, c.jpg 50x60, plus extra.parquet
    holding one text-only "open" sample."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (10, 20)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (30, 40)).save(tmp_path / "img" / "b.png")
    Image.new("RGB", (50, 60)).save(tmp_path / "img" / "c.jpg")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(
        pa.table({"id": ["e"], "question": ["q5"], "answer": ["x"], "kind": ["open"]}),
        tmp_path / "extra.parquet",
    )
    return tmp_path


def test_describe_counts(data):
    """Images in reference order: a(10x20), b(30x40), c(50x60), a(10x20).
    widths [10, 30, 50, 10] -> min 10, median (10 + 30) / 2 = 20, max 50;
    heights [20, 40, 60, 20] -> min 20, median (20 + 40) / 2 = 30, max 60."""
    d = describe(load_samples(data, on_bad="skip"))
    assert d["kinds"] == {"choice": [1, 1, 0], "math": [3, 2, 1], "open": [1, 0, 1]}
    assert d["images"] == 4 and d["width"] == (10, 20, 50) and d["height"] == (20, 30, 60)
    assert d["formats"] == {"PNG": 3, "JPEG": 1}
    counts = [d[k] for k in ("files", "rows", "samples", "problems", "rows_skipped")]
    assert counts == [2, 5, 5, 0, 0]


def test_good_files_exit_zero(data, capsys):
    assert main(["data", "check", str(data / "train.jsonl"), str(data / "extra.parquet")]) == 0
    out = capsys.readouterr().out
    assert "2 file(s), 5 rows: 5 samples loaded, 0 rows with problems" in out
    assert "10 / 20 / 50" in out and "PNG 3, JPEG 1" in out and "no problems found" in out


def test_corrupt_line_is_named(data, capsys):
    path = data / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]  # cut the end of line 3: no closing brace
    path.write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:3: malformed JSON: " in out
    assert "4 samples loaded, 1 rows with problems" in out


def test_deleted_image_is_named(data, capsys):
    os.remove(data / "img" / "a.png")
    assert main(["data", "check", str(data / "train.jsonl")]) == 1
    out = capsys.readouterr().out
    path = data / "train.jsonl"
    assert f"{path}:1: field 'images[0]': file not found: img/a.png" in out
    assert f"{path}:4: field 'images[0]': file not found: img/a.png" in out
    assert "by reason: file not found 2" in out


def test_every_problem_of_a_row_is_listed(data, capsys):
    """z_more.jsonl sorts after train.jsonl, so its id 'a' is the duplicate."""
    bad = {"id": "a", "question": 5, "images": ["img/none.png"], "answer": "1", "kind": "math"}
    (data / "z_more.jsonl").write_text(json.dumps(bad) + "\n")
    assert main(["data", "check", str(data)]) == 1
    out = capsys.readouterr().out.splitlines()
    more = data / "z_more.jsonl"
    assert [x for x in out if x.startswith(str(more))] == [
        f"{more}:1: field 'question': expected a string, got number",
        f"{more}:1: field 'id': duplicate id 'a' (first at {data / 'train.jsonl'}:1)",
        f"{more}:1: field 'images[0]': file not found: img/none.png",
    ]


def test_decode_images_finds_truncated_files(data, capsys):
    buf = io.BytesIO()
    Image.frombytes("RGB", (30, 40), os.urandom(30 * 40 * 3)).save(buf, format="PNG")
    (data / "img" / "b.png").write_bytes(buf.getvalue()[:200])
    assert main(["data", "check", str(data)]) == 0  # headers only: the header is intact
    assert main(["data", "check", str(data), "decode_images=true"]) == 1
    assert (
        "train.jsonl:2: field 'images[0]': unreadable image: img/b.png (cannot decode"
        in capsys.readouterr().out
    )


def test_max_pixels_option(data, capsys):
    """c.jpg is 50 x 60 = 3000 pixels: over a limit of 2999."""
    assert main(["data", "check", str(data), "--max_pixels", "2999"]) == 1
    out = capsys.readouterr().out
    assert (
        "train.jsonl:2: field 'images[1]': image too large: img/c.jpg (50x60 = 3000 pixels" in out
    )


def test_missing_path_is_one_error_line(data, capsys):
    assert main(["data", "check", str(data / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err == f"r1v2 data check: error: {data / 'nope.jsonl'}: no such file or folder\n"


@pytest.mark.slow
def test_missing_path_and_subprocess(data):
    """Through `python -m r1v2`: a missing file is an error on stderr, exit 2."""
    cmd = [sys.executable, "-m", "r1v2", "data", "check", str(data / "nope.jsonl")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"r1v2 data check: error: {data / 'nope.jsonl'}: no such file or folder" in proc.stderr
    ok = subprocess.run(cmd[:-1] + [str(data)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_pairs_files_get_the_pairs_report(data, capsys):
    """A pairs file (first row has chosen/rejected) is checked as pairs beside sample files:
    3 rows, one with a missing image; chosen words (3 + 1) / 2 = 2.0, rejected (1 + 1) / 2 =
    1.0; pair p2's chosen and rejected are the same once stripped (a warning, not a problem)."""
    rows = [
        {"id": "p1", "question": "q", "image": "img/a.png", "chosen": "a b c", "rejected": "x"},
        {"id": "p2", "question": "q", "chosen": "same", "rejected": " same "},
        {"id": "p3", "question": "q", "image": "img/gone.png", "chosen": "c", "rejected": "r"},
    ]
    pairs = data / "pairs" / "pairs.jsonl"
    pairs.parent.mkdir()
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "pairs" / "img").symlink_to(data / "img")
    assert main(["data", "check", str(data / "train.jsonl"), str(pairs.parent)]) == 1
    out = capsys.readouterr().out
    assert "1 file(s), 4 rows: 4 samples loaded, 0 rows with problems" in out
    assert "1 pairs file(s), 3 rows: 2 pairs loaded, 1 rows with problems" in out
    assert (
        "pairs with images 1 (1 images), text-only 1; mean words: chosen 2.0, rejected 1.0" in out
    )
    assert "warning: 1 pair(s) with the same chosen and rejected response" in out
    assert "pairs.jsonl:3: field 'image'" in out and "unknown field" not in out
    assert main(["data", "check", str(data)]) == 1  # a folder of both kinds is split by file
    out = capsys.readouterr().out
    assert "2 file(s), 5 rows: 5 samples loaded, 0 rows with problems" in out
    assert "1 pairs file(s), 3 rows: 2 pairs loaded, 1 rows with problems" in out
    pairs.write_text(json.dumps(rows[0]) + "\n")
    assert main(["data", "check", str(pairs)]) == 0
    assert capsys.readouterr().out.endswith("no problems found\n")
