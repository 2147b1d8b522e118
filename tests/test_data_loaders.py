"""The Sample schema, image probing/opening, load_samples and write_jsonl."""

import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from r1v2.data import (
    DataError,
    ImageError,
    ImageInfo,
    Sample,
    find_data_files,
    load_samples,
    open_image,
    probe_image,
    write_jsonl,
)
from r1v2.errors import R1V2Error

# ---------------------------------------------------------------------------- helpers


def png(path: Path, w: int, h: int, color=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose IHDR claims w x h pixels, with almost no pixel data (a 'bomb' header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def truncated_png(path: Path) -> Path:
    """A real 40x30 noisy PNG cut in half: the header is valid, the pixels are not all there."""
    im = Image.frombytes("RGB", (40, 30), os.urandom(40 * 30 * 3))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_lines(path: Path, rows) -> Path:
    """One line per row: a dict is dumped as JSON, a str is written as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD_ROWS = [
    {
        "id": "a",
        "question": "how many red circles ?",
        "images": ["img/a.png"],
        "answer": 4,
        "kind": "math",
    },
    {
        "id": "b",
        "question": "which ?",
        "images": ["img/b.jpg", "img/a.png"],
        "answer": "B",
        "choices": ["1", "2"],
        "kind": "choice",
        "metadata": {"level": 2},
    },
    {"id": "c", "question": "what is 1/2 ?", "images": [], "answer": 0.5, "kind": "open"},
    {
        "id": "d",
        "question": "text only, no images key",
        "answer": "x",
        "kind": "open",
        "choices": None,
        "metadata": None,
    },
]


@pytest.fixture
def data_dir(tmp_path):
    """data/ with img/a.png (64x48), img/b.jpg (32x32) and train.jsonl holding GOOD_ROWS."""
    d = tmp_path / "data"
    png(d / "img" / "a.png", 64, 48)
    (d / "img").mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(d / "img" / "b.jpg")
    write_lines(d / "train.jsonl", GOOD_ROWS)
    return d


def to_parquet(rows, path: Path) -> Path:
    """Rows as a parquet table; metadata as a JSON string (parquet has no free-form dict)."""
    cols = {
        k: [r.get(k) for r in rows]
        for k in ("id", "question", "images", "answer", "choices", "kind")
    }
    cols["images"] = [r.get("images") or [] for r in rows]
    cols["answer"] = [str(r["answer"]) for r in rows]
    cols["metadata"] = [json.dumps(r["metadata"]) if r.get("metadata") else None for r in rows]
    pq.write_table(pa.table(cols), path)
    return path


# ---------------------------------------------------------------------------- good files


def test_good_jsonl(data_dir, monkeypatch):
    """Paths resolve against the data file's folder, not the working directory; numbers
    become strings (4 -> "4", 0.5 -> "0.5"); absent optional fields get their defaults."""
    monkeypatch.chdir(data_dir.parent)
    result = load_samples("data/train.jsonl")
    a, b, c, d = result.samples
    img = data_dir.absolute() / "img"
    assert a == Sample("a", "how many red circles ?", (img / "a.png",), "4", None, "math", {})
    assert b.images == (img / "b.jpg", img / "a.png") and b.choices == ("1", "2")
    assert b.metadata == {"level": 2} and b.kind == "choice" and b.answer == "B"
    assert c.images == () and c.answer == "0.5"
    assert d.images == () and d.choices is None and d.metadata == {}
    assert result.rows == 4 and result.problems == [] and result.skipped == []
    assert result.files == [Path("data/train.jsonl")]
    # one ImageInfo per image reference: a.png, b.jpg, a.png
    assert result.images == [
        ImageInfo(64, 48, "PNG"),
        ImageInfo(32, 32, "JPEG"),
        ImageInfo(64, 48, "PNG"),
    ]
    monkeypatch.chdir("/")
    assert a.open_images()[0].size == (64, 48)  # absolute paths: still found from elsewhere


def test_parquet_loads_the_same_samples(data_dir):
    expected = load_samples(data_dir / "train.jsonl").samples
    got = load_samples(to_parquet(GOOD_ROWS, data_dir / "train.parquet")).samples
    assert got == expected


def test_parquet_embedded_images_and_hf_structs(tmp_path):
    raw = io.BytesIO()
    Image.new("RGB", (5, 7), (0, 255, 0)).save(raw, format="PNG")
    png(tmp_path / "img" / "p.png", 3, 2)
    table = pa.table(
        {
            "id": ["e1", "e2"],
            "question": ["q", "q"],
            "images": [[raw.getvalue()], [raw.getvalue()]],
            "answer": ["1", "2"],
            "kind": ["math", "math"],
        }
    )
    pq.write_table(table, tmp_path / "emb.parquet")
    hf = pa.table(
        {
            "id": ["h1"],
            "question": ["q"],
            "answer": ["1"],
            "kind": ["math"],
            "images": [
                [{"bytes": None, "path": "img/p.png"}, {"bytes": raw.getvalue(), "path": "x.png"}]
            ],
        }
    )
    pq.write_table(hf, tmp_path / "hf.parquet")
    result = load_samples([tmp_path / "emb.parquet", tmp_path / "hf.parquet"])
    e1, e2, h1 = result.samples
    assert e1.images == (raw.getvalue(),) and e1.open_images()[0].getpixel((0, 0)) == (0, 255, 0)
    assert h1.images == ((tmp_path / "img" / "p.png").absolute(), raw.getvalue())
    assert [i.width for i in result.images] == [5, 5, 3, 5]


def test_folder_is_recursive_sorted_and_skips_hidden(data_dir):
    write_lines(data_dir / "b.jsonl", [{"id": "b1", "question": "q", "answer": "1", "kind": "m"}])
    write_lines(
        data_dir / "sub" / "a.jsonl", [{"id": "s1", "question": "q", "answer": "1", "kind": "m"}]
    )
    to_parquet(
        [{"id": "p1", "question": "q", "answer": "1", "kind": "m"}], data_dir / "sub" / "z.parquet"
    )
    write_lines(data_dir / ".cache" / "x.jsonl", ["not json at all"])
    (data_dir / "notes.txt").write_text("ignored")
    files = find_data_files(data_dir)
    assert [f.relative_to(data_dir).as_posix() for f in files] == [
        "b.jsonl",
        "sub/a.jsonl",
        "sub/z.parquet",
        "train.jsonl",
    ]
    ids = [s.id for s in load_samples(data_dir).samples]
    assert ids == ["b1", "s1", "p1", "a", "b", "c", "d"]
    # a file named twice (directly and through its folder) is read once: no duplicate ids
    assert len(load_samples([data_dir / "b.jsonl", data_dir]).samples) == 7


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        load_samples(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("id\n")
    with pytest.raises(DataError, match=r"x.csv: unsupported file type '.csv'"):
        load_samples(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jsonl or .parquet files"):
        load_samples(tmp_path / "empty")
    with pytest.raises(ValueError, match="on_bad"):
        load_samples(tmp_path, on_bad="ignore")


# ---------------------------------------------------------------------------- one case per bad input

GOOD = {"id": "ok", "question": "q", "answer": "1", "kind": "math"}


def _row(**changes):
    row = {"id": "r", "question": "q", "images": ["img/a.png"], "answer": "1", "kind": "math"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


BAD_ROWS = {
    # name: (line 3 of the file, field, category, text in the message)
    "malformed JSON": ('{"id": "r", "question": ', None, "malformed JSON", "malformed JSON: "),
    "not an object": ("[1, 2]", None, "wrong type", "a row must be a JSON object, got array"),
    "missing field": (_row(answer=...), "answer", "missing field", "required field is missing"),
    "wrong type": (_row(question=7), "question", "wrong type", "expected a string, got number"),
    "bool answer": (_row(answer=True), "answer", "wrong type", "got boolean"),
    "NaN answer": (
        '{"id": "r", "question": "q", "answer": NaN, "kind": "m"}',
        "answer",
        "wrong type",
        "got nan",
    ),
    "images not a list": (
        _row(images="img/a.png"),
        "images",
        "wrong type",
        "expected a list of image paths",
    ),
    "choice not a string": (_row(choices=["1", 2]), "choices[1]", "wrong type", "got number"),
    "empty choices": (_row(choices=[]), "choices", "empty value", "must not be empty"),
    "metadata not an object": (_row(metadata=[1]), "metadata", "wrong type", "expected an object"),
    "empty id": (_row(id=" "), "id", "empty value", "must not be empty"),
    "unknown field": (_row(image="img/a.png"), "image", "unknown field", "valid: id, question"),
    "missing image": (
        _row(images=["img/a.png", "img/nope.png"]),
        "images[1]",
        "file not found",
        "file not found: img/nope.png",
    ),
    "corrupt image": (
        _row(images=["img/corrupt.png"]),
        "images[0]",
        "unreadable image",
        "unreadable image: img/corrupt.png (not an image format PIL can identify)",
    ),
    "over the pixel limit": (
        _row(images=["img/big.png"]),
        "images[0]",
        "image too large",
        "image too large: img/big.png (100x100 = 10000 pixels, over max_pixels=9999)",
    ),
    "bomb over 2x PIL's limit": (
        _row(images=["img/bomb.png"]),
        "images[0]",
        "decompression bomb",
        "decompression bomb: img/bomb.png (PIL: Image size (400000000 pixels)",
    ),
    "bomb over PIL's limit": (
        _row(images=["img/bomb1.png"]),
        "images[0]",
        "decompression bomb",
        "decompression bomb: img/bomb1.png (PIL: Image size (100000000 pixels)",
    ),
    "duplicate id": (_row(id="ok"), "id", "duplicate id", "duplicate id 'ok' (first at "),
}


@pytest.fixture
def images_dir(tmp_path):
    png(tmp_path / "img" / "a.png", 8, 8)
    png(tmp_path / "img" / "big.png", 100, 100)
    (tmp_path / "img" / "corrupt.png").write_bytes(b"this is not a PNG file")
    # PIL's limit is 89,478,485 pixels: over it a warning, over twice it an error.
    png_header_only(tmp_path / "img" / "bomb.png", 20000, 20000)  # 4e8 > 2 x the limit
    png_header_only(tmp_path / "img" / "bomb1.png", 10000, 10000)  # 1e8 > the limit
    return tmp_path


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_names_file_line_and_field(images_dir, case):
    """Line 1 good, line 2 blank (counted, skipped), line 3 bad: the error points at line 3."""
    bad, field, category, text = BAD_ROWS[case]
    path = write_lines(images_dir / "train.jsonl", [GOOD, "", bad])
    with pytest.raises(DataError) as e:
        load_samples(path, max_pixels=9999)
    err = e.value
    assert isinstance(err, R1V2Error)
    assert (err.file, err.line, err.field, err.category) == (str(path), 3, field, category)
    where = f"{path}:3: " + (f"field '{field}': " if field else "")
    assert str(err).startswith(where) and text in str(err), str(err)


def test_bomb_refused_even_when_warnings_are_ignored(images_dir):
    """A caller's `ignore` filter does not switch off the guard against PIL's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageError, match="decompression bomb"):
            probe_image(images_dir / "img" / "bomb1.png", max_pixels=10**9)


def test_bad_parquet_row_is_named_by_row_number(tmp_path):
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "question": ["q", "", "q"],
            "answer": ["1", "2", "3"],
            "kind": ["m", "m", "m"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataError) as e:
        load_samples(tmp_path / "t.parquet")
    assert (e.value.line, e.value.field, e.value.category) == (2, "question", "empty value")
    assert str(e.value).startswith(f"{tmp_path / 't.parquet'}:2: field 'question': ")


def test_duplicate_id_across_files(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [GOOD])
    b = write_lines(tmp_path / "b.jsonl", [dict(GOOD, id="other"), GOOD])
    with pytest.raises(
        DataError, match=rf"b.jsonl:2: field 'id': duplicate id 'ok' \(first at {a}:1\)"
    ):
        load_samples(tmp_path)
    assert b.exists()


# ---------------------------------------------------------------------------- skip mode


def test_skip_mode_summary_by_reason(images_dir):
    """Rows 2, 4, 5, 6 are bad; row 5 has two problems and is counted once, by its first."""
    path = write_lines(
        images_dir / "mix.jsonl",
        [
            GOOD,  # 1
            "{oops",  # 2 malformed
            _row(id="r3"),  # 3 good
            _row(id="r4", images=["img/nope.png"]),  # 4 file not found
            _row(id="r5", question=1, images=["img/x.png"]),  # 5 wrong type + file not found
            _row(id="ok"),  # 6 duplicate
            _row(id="r7", images=["img/nope.png"]),  # 7 file not found
        ],
    )
    result = load_samples(path, on_bad="skip")
    assert [s.id for s in result.samples] == ["ok", "r3"]
    assert result.rows == 7 and len(result.skipped) == 5 and len(result.problems) == 6
    p = str(path)
    assert result.skipped_by_reason() == {
        "malformed JSON": [f"{p}:2"],
        "file not found": [f"{p}:4", f"{p}:7"],
        "wrong type": [f"{p}:5"],
        "duplicate id": [f"{p}:6"],
    }
    assert [str(e).split(": field")[0] for e in result.problems[2:4]] == [f"{p}:5", f"{p}:5"]
    assert result.summary() == (
        f"loaded 2 samples from 1 file(s), 7 rows; skipped 5: 2 file not found ({p}:4, {p}:7); "
        f"1 malformed JSON ({p}:2); 1 wrong type ({p}:5); 1 duplicate id ({p}:6)"
    )


def test_skip_mode_keeps_going_past_an_unreadable_parquet(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 this is not parquet")
    write_lines(tmp_path / "b.jsonl", [GOOD])
    result = load_samples(tmp_path, on_bad="skip")
    assert [s.id for s in result.samples] == ["ok"]
    assert result.skipped_by_reason() == {"unreadable file": [str(tmp_path / "a.parquet")]}
    with pytest.raises(DataError, match="a.parquet: cannot read parquet"):
        load_samples(tmp_path)


# ---------------------------------------------------------------------------- lazy images


def test_loading_reads_headers_only(data_dir, monkeypatch):
    """No pixel is decoded while loading (ImageFile.load is never called); opening decodes."""
    calls = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self):
        calls.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    result = load_samples(data_dir / "train.jsonl")
    assert len(result.images) == 3 and calls == []
    images = result.samples[1].open_images()
    assert list(dict.fromkeys(calls)) == ["JPEG", "PNG"]  # load() may run again inside convert()
    assert [im.size for im in images] == [(32, 32), (64, 48)] and images[0].mode == "RGB"


def test_truncated_image_passes_header_check_and_fails_on_open(tmp_path):
    truncated_png(tmp_path / "img" / "t.png")
    path = write_lines(tmp_path / "t.jsonl", [_row(images=["img/t.png"])])
    (sample,) = load_samples(path).samples  # the header is fine
    with pytest.raises(ImageError, match=r"unreadable image: .*t.png \(cannot decode: "):
        sample.open_images()
    with pytest.raises(DataError) as e:
        load_samples(path, decode_images=True)
    assert (e.value.line, e.value.field, e.value.category) == (1, "images[0]", "unreadable image")


def test_check_images_false_touches_no_image(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [_row(images=["img/missing.png"])])
    result = load_samples(path, check_images=False)
    assert result.samples[0].images == ((tmp_path / "img" / "missing.png").absolute(),)
    assert result.images == []
    with pytest.raises(ImageError, match="file not found: .*missing.png"):
        result.samples[0].open_images()


# ---------------------------------------------------------------------------- images


def test_open_image_to_rgb_composites_transparency_on_white(tmp_path):
    """RGBA pixel (255, 0, 0, 255) stays red; (0, 0, 0, 0) becomes white, not black."""
    im = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.save(tmp_path / "t.png")
    rgb = open_image(tmp_path / "t.png")
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((1, 0)) == (255, 255, 255)
    grey = Image.new("L", (3, 2), 7)
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    out = open_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (3, 2) and out.getpixel((2, 1)) == (7, 7, 7)


def test_open_image_takes_every_kind_of_source(tmp_path):
    """A PIL image, a str path, a Path, bytes and a bytearray of one 2x1 palette image with a
    transparent index all give the same RGB pixels: red, then white (transparency on white)."""
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 0, 0, 0, 0, 0])
    im.putpixel((1, 0), 1)
    im.info["transparency"] = 1
    im.save(tmp_path / "p.png")
    raw = (tmp_path / "p.png").read_bytes()
    for source in (im, str(tmp_path / "p.png"), tmp_path / "p.png", raw, bytearray(raw)):
        out = open_image(source)
        assert out.mode == "RGB", type(source)
        assert [out.getpixel((0, 0)), out.getpixel((1, 0))] == [(255, 0, 0), (255, 255, 255)]
    assert im.mode == "P"  # the caller's image is left as it was


@pytest.mark.parametrize("bad", [None, 3, ["a.png"], {"path": "a.png"}])
def test_open_image_names_what_it_cannot_use(bad):
    with pytest.raises(R1V2Error, match=rf"cannot use {type(bad).__name__} as an image \("):
        open_image(bad)


def test_prompt_images_go_through_open_image(tmp_path):
    """The policy's prompts open images with open_image: a transparent pixel becomes white,
    a missing file is an ImageError naming it, and a non-image names its type."""
    from r1v2.model.policy import to_prompt

    (image,) = to_prompt(("q", [Image.new("RGBA", (1, 1), (0, 0, 0, 0))])).images
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageError, match=r"file not found: .*nope\.png"):
        to_prompt(("q", [tmp_path / "nope.png"]))
    with pytest.raises(R1V2Error, match=r"cannot use int as an image"):
        to_prompt(("q", [7]))


def test_probe_and_open_refuse_over_the_limit(tmp_path):
    """10 x 10 = 100 pixels: allowed at max_pixels=100, refused at 99, before decoding."""
    p = png(tmp_path / "a.png", 10, 10)
    assert probe_image(p, max_pixels=100) == ImageInfo(10, 10, "PNG")
    for fn in (probe_image, open_image):
        with pytest.raises(ImageError, match=r"image too large: .*a.png \(10x10 = 100 pixels"):
            fn(p, max_pixels=99)
    with pytest.raises(ImageError, match=r"unreadable image: <embedded image, 3 bytes>"):
        open_image(b"abc")


# ---------------------------------------------------------------------------- Sample and write_jsonl


def test_sample_normalises_inputs():
    s = Sample("x", "q", ["a.png", b"\x89PNG"], 3, ["1", "2"], metadata=None)
    assert s.images == (Path("a.png"), b"\x89PNG") and s.answer == "3"
    assert s.choices == ("1", "2") and s.kind == "open" and s.metadata == {}
    assert hash(s) == hash(
        Sample("x", "q", ("a.png", b"\x89PNG"), "3", ("1", "2"), "open", {"k": 1})
    )
    with pytest.raises(TypeError):
        Sample("x", "q", (), True)
    with pytest.raises(TypeError):
        Sample("x", "q", (3,), "1")


def test_write_jsonl_round_trip_with_relative_paths(data_dir, tmp_path):
    """Out file two folders away: image paths become ../../data/img/...; embedded bytes are
    stored once in <stem>_images/ named by their hash."""
    samples = load_samples(data_dir / "train.jsonl").samples
    raw = (data_dir / "img" / "a.png").read_bytes()
    extra = Sample("e", "embedded", (raw, raw), "1", kind="math", metadata={"k": [1, 2]})
    out = tmp_path / "out" / "sub" / "copy.jsonl"
    assert write_jsonl([*samples, extra], out) == out
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[1]["images"] == ["../../data/img/b.jpg", "../../data/img/a.png"]
    assert lines[0] == {
        "id": "a",
        "question": "how many red circles ?",
        "images": ["../../data/img/a.png"],
        "answer": "4",
        "choices": None,
        "kind": "math",
        "metadata": {},
    }
    stored = list((out.parent / "copy_images").iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".png" and stored[0].read_bytes() == raw
    assert lines[4]["images"] == [f"copy_images/{stored[0].name}"] * 2
    back = load_samples(out).samples
    assert back[:4] == samples
    assert back[4].images == (stored[0],) * 2 and back[4].metadata == {"k": [1, 2]}
    assert not list(out.parent.glob("*.tmp"))


def test_write_jsonl_refuses_non_json_metadata_and_leaves_no_file(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(DataError, match=r"o.jsonl: field 'metadata': sample 'x' cannot be written"):
        write_jsonl([Sample("x", "q", (), "1", metadata={"v": float("nan")})], out)
    assert not out.exists() and not list(tmp_path.iterdir())
