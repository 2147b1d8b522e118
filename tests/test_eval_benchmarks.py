"""Benchmark adapters: each published layout, read from a fixture, becomes the expected Samples."""

import base64
import json
from pathlib import Path

import pytest
from fixtures.eval_benchmarks import (
    png_bytes,
    write_aime,
    write_jsonl,
    write_mathvision,
    write_mathvista,
    write_mmmu,
    write_mmmu_pro,
    write_olympiadbench,
    write_parquet,
    write_pope,
    write_samples,
)

from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import (
    GPQA_WRONG,
    BenchmarkError,
    adapter_for,
    category,
    load_benchmark,
    parse_bench,
)
from r1v2.eval.prompts import prompt_sample, prompt_text


def by_id(bench):
    return {s.id: s for s in bench.samples}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_mathvista(tmp_path, fmt):
    b = load_benchmark(f"MathVista={write_mathvista(tmp_path, fmt)}")
    assert (b.name, b.adapter, b.scorer) == ("MathVista", "mathvista", "mathvista")
    s = by_id(b)
    # Multiple-choice answers are option texts in MathVista: "45°" is the second option -> B.
    assert (
        s["1"].answer == "B" and s["1"].choices == ("30°", "45°", "60°") and s["1"].kind == "choice"
    )
    assert s["2"].metadata["precision"] == 1 and s["2"].metadata["unit"] == "cm"
    assert "(Unit: cm)" in s["2"].question and "1 decimal place" in s["2"].question
    assert s["3"].question == "How many balls?" and s["3"].answer == "4" and s["3"].kind == "math"
    assert category(s["1"]) == "geometry problem solving"
    img = s["1"].images[0]
    if fmt == "parquet":  # embedded HF image dict -> bytes; JSONL -> a file next to the data
        assert img == png_bytes((0, 0, 255))
    else:
        assert isinstance(img, Path) and img.read_bytes() == png_bytes((0, 0, 255))
    assert s["1"].open_images()[0].getpixel((0, 0)) == (0, 0, 255)


def test_mmmu_folder_of_subjects(tmp_path):
    b = load_benchmark(f"mmmu={write_mmmu(tmp_path)}")
    s = by_id(b)
    assert list(s) == [
        "validation_Accounting_1",
        "validation_Accounting_2",
        "validation_Art_Theory_1",
        "validation_Art_Theory_2",
    ]  # sorted files
    mc = s["validation_Art_Theory_1"]
    assert mc.question == "Compare [image 1] and [image 2]. Which is larger?"
    assert mc.choices == ("[image 1]", "[image 2]", "equal") and mc.answer == "B"
    assert mc.images == (png_bytes((1, 2, 3)), png_bytes((4, 5, 6)))
    assert category(mc) == "Art_Theory"  # subject taken from the id
    op = s["validation_Accounting_2"]
    assert (
        op.choices is None and op.metadata["answers"] == ["24/7", "3.429"] and op.answer == "24/7"
    )
    assert b.scorer == "any_of"


def test_mmmu_pro_standard_and_vision(tmp_path):
    std, vis = write_mmmu_pro(tmp_path)
    a = load_benchmark(f"mmmu-pro={std}").samples[0]
    assert (
        a.question == "Look at [image 1]. Who built it?" and a.answer == "C" and len(a.choices) == 4
    )
    v = load_benchmark(f"pro_vision:mmmu_pro={vis}").samples[0]
    assert v.metadata["choices_in_image"] and v.answer == "D" and len(v.images) == 1
    # The vision setting's options are in the image: the prompt does not list them.
    text = prompt_text(v, "any_of")
    assert "A. 1" not in text and "\\boxed{" in text
    assert "A. Romans\nB. Greeks" in prompt_text(a, "any_of")


def test_mathvision_image_files(tmp_path):
    b = load_benchmark(f"mathvision={write_mathvision(tmp_path)}")
    s = by_id(b)
    assert s["1"].question == "[image 1]\nWhich shape has the most sides?"
    assert s["1"].answer == "C" and s["1"].choices == ("A", "B", "C", "D", "E")
    assert (
        s["2"].choices is None and s["2"].answer == "\\frac{1}{2}" and s["2"].metadata["level"] == 4
    )
    assert s["2"].images[0] == tmp_path / "mathvision" / "images" / "2.jpg"
    assert category(s["2"]) == "metric geometry - area"


def test_olympiadbench(tmp_path):
    b = load_benchmark(f"olympiadbench={write_olympiadbench(tmp_path)}")
    s = by_id(b)
    assert list(s) == ["101", "102", "103"]
    assert len(b.skipped) == 1 and b.skipped[0].endswith(
        ":4: no final answer (theorem proving is not scored by rules)"
    )
    assert s["101"].answer == "3" and s["101"].images == (
        png_bytes((200, 100, 0)),
    )  # base64 decoded
    assert s["101"].question == "Find x in [image 1]."
    assert s["102"].metadata["tolerance"] == 0.1 and s["102"].question.startswith(
        "A ball rolls.\nFind the speed."
    )
    assert "m/s" in s["102"].question
    assert s["103"].metadata["answers"] == ["1", "-2"] and s["103"].metadata["multiple"]
    assert s["103"].answer == "1, -2" and "several answers" in s["103"].question
    assert category(s["102"]) == "Physics"


def test_aime(tmp_path):
    b = load_benchmark(f"aime24={write_aime(tmp_path)}")
    assert b.adapter == "aime2024"
    assert [(x.id, x.answer, x.images) for x in b.samples] == [
        ("2024-I-1", "4", ()),
        ("2024-I-2", "104", ()),
    ]


def test_pope(tmp_path):
    b = load_benchmark(f"pope={write_pope(tmp_path)}")
    assert [x.id for x in b.samples] == ["1", "2", "3", "4"]  # question_id
    assert [x.answer for x in b.samples] == ["yes", "no", "yes", "no"]
    assert [category(x) for x in b.samples] == ["adversarial", "adversarial", "random", "random"]
    assert b.scorer == "yesno" and "yes or no" in prompt_text(b.samples[0], "yesno")


def test_samples_file_is_shown_as_stored(tmp_path):
    b = load_benchmark(f"toy:synthetic={write_samples(tmp_path)}")
    assert b.name == "toy" and b.adapter == "samples" and not b.instruct
    s = by_id(b)
    assert category(s["s1"]) == "level 1"
    assert prompt_sample(s["s2"], b.scorer, b.instruct) is s["s2"]  # no instruction added


def test_limit_keeps_first_rows(tmp_path):
    b = load_benchmark(f"pope={write_pope(tmp_path)}", limit=2)
    assert [x.id for x in b.samples] == ["1", "2"]


def test_prompt_lists_options_and_asks_for_a_letter(tmp_path):
    s = by_id(load_benchmark(f"mathvista={write_mathvista(tmp_path)}"))["1"]
    p = prompt_sample(s, "mathvista", True)
    assert p.choices is None and p.images == s.images and p.answer == "B"
    assert p.question == (
        "What is the angle?\n\nOptions:\nA. 30°\nB. 45°\nC. 60°\n\n"
        "Think step by step, then answer with the letter of the correct option within \\boxed{} "
        "(for example \\boxed{A})."
    )


# ---- errors name file, line and field ------------------------------------------------------


def test_missing_field_names_file_line_field(tmp_path):
    path = write_jsonl(
        tmp_path / "aime.jsonl",
        [{"ID": "a", "Problem": "p", "Answer": 1}, {"ID": "b", "Answer": 2}],
    )
    with pytest.raises(BenchmarkError, match=r"aime\.jsonl:2: field 'Problem': missing"):
        load_benchmark(f"aime2024={path}")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "pope.jsonl"
    path.write_text('{"question_id": 1}\n{not json\n')
    with pytest.raises(BenchmarkError, match=r"pope\.jsonl:1: field 'answer': missing"):
        load_benchmark(f"pope={path}")
    path.write_text("{not json\n")
    with pytest.raises(BenchmarkError, match=r"pope\.jsonl:1: malformed JSON"):
        load_benchmark(f"pope={path}")


def test_missing_image_file_and_bad_bytes(tmp_path):
    row = {
        "question_id": "1",
        "question": "q?",
        "answer": "yes",
        "image": "nope/1.jpg",
        "category": "random",
    }
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(
        BenchmarkError, match=r"p\.jsonl:1: field 'image': file not found: nope/1\.jpg"
    ):
        load_benchmark(f"pope={path}")
    bad = {**row, "image": {"bytes": b"not an image at all", "path": None}}
    path = write_parquet(tmp_path / "p.parquet", [bad])
    with pytest.raises(BenchmarkError, match=r"p\.parquet:1: field 'image': unreadable image"):
        load_benchmark(f"pope={path}")


def test_base64_and_data_uri_images(tmp_path):
    raw = png_bytes((7, 8, 9))
    b64 = base64.b64encode(raw).decode()
    rows = [
        {"question_id": str(i), "question": "q?", "answer": "no", "image": img, "category": "c"}
        for i, img in enumerate([b64, "data:image/png;base64," + b64])
    ]
    b = load_benchmark(f"pope={write_jsonl(tmp_path / 'p.jsonl', rows)}")
    assert [x.images for x in b.samples] == [(raw,), (raw,)]


def test_duplicate_ids(tmp_path):
    rows = [{"ID": "x", "Problem": "p", "Answer": 1}, {"ID": "x", "Problem": "q", "Answer": 2}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(
        BenchmarkError, match=r"a\.jsonl:2: field 'id': duplicate id 'x' \(first at .*a\.jsonl:1\)"
    ):
        load_benchmark(f"aime={path}")


def test_answer_not_among_choices(tmp_path):
    rows = [
        {
            "id": "1",
            "question": "q",
            "options": ["1", "2"],
            "image": None,
            "answer": "7",
            "level": 1,
            "subject": "s",
        }
    ]
    path = write_jsonl(tmp_path / "mv.jsonl", rows)
    with pytest.raises(
        BenchmarkError, match=r"mv\.jsonl:1: field 'answer': answer '7' is neither a letter A-B"
    ):
        load_benchmark(f"mathvision={path}")


def test_names_and_specs(tmp_path):
    assert adapter_for("MMMU_Pro").name == "mmmu-pro" and adapter_for("AIME24").name == "aime2024"
    label, adapter, path = parse_bench("mine:mathvista=/data/x.parquet")
    assert (label, adapter.name, path) == ("mine", "mathvista", Path("/data/x.parquet"))
    with pytest.raises(BenchmarkError, match="unknown benchmark 'gsm8k'; known: mathvista"):
        parse_bench("gsm8k=/x.jsonl")
    with pytest.raises(BenchmarkError, match="expected NAME=PATH"):
        parse_bench("mathvista")
    with pytest.raises(BenchmarkError, match="no such file or folder"):
        load_benchmark(f"pope={tmp_path / 'missing.parquet'}")


def test_json_list_file(tmp_path):
    path = tmp_path / "aime.json"
    path.write_text(json.dumps([{"ID": 1, "Problem": "p", "Answer": 3}]))
    assert load_benchmark(f"aime={path}").samples[0].id == "1"


def test_mathvista_answer_text_wins_over_letter(tmp_path):
    """MathVista answers are option texts: answer "B" with choices (A, C, B) is the third option."""
    row = {
        "pid": "9",
        "question": "Which?",
        "choices": ["A", "C", "B"],
        "answer": "B",
        "image": None,
        "question_type": "multi_choice",
        "answer_type": "text",
        "metadata": {"task": "t"},
    }
    b = load_benchmark(f"mathvista={write_jsonl(tmp_path / 'mv.jsonl', [row])}")
    assert b.samples[0].answer == "C"


def write_gpqa(path, n: int) -> list[dict]:
    """A GPQA-layout CSV (the published columns, the correct answer first) of ``n`` items."""
    import csv

    rows = [
        {
            "Record ID": f"rec{i}",
            "Question": f"Which value is right in case {i}?",
            "Correct Answer": f"right {i}",
            "Incorrect Answer 1": f"wrong a{i}",
            "Incorrect Answer 2": f"wrong b{i}",
            "Incorrect Answer 3": f"wrong, with a comma and\na line break {i}",
            "High-level domain": "Physics" if i % 2 else "Chemistry",
            "Subdomain": "x",
        }
        for i in range(n)
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_gpqa_shuffles_the_choices_per_item_with_a_seed(tmp_path):
    file = tmp_path / "gpqa_diamond.csv"
    rows = write_gpqa(file, 40)
    bench = load_benchmark(f"gpqa={file}")
    assert bench.scorer == "accuracy" and len(bench.samples) == 40
    for row, s in zip(rows, bench.samples):
        assert s.id == row["Record ID"] and s.kind == "choice" and len(s.choices) == 4
        assert s.choices["ABCD".index(s.answer)] == row["Correct Answer"]
        assert set(s.choices) == {row[k] for k in ("Correct Answer", *GPQA_WRONG)}
        assert s.metadata["category"] == row["High-level domain"]
    letters = [s.answer for s in bench.samples]
    assert set(letters) == set("ABCD")  # the correct answer is not always first
    again = load_benchmark(f"gpqa={file}").samples
    assert [s.choices for s in again] == [s.choices for s in bench.samples]
    other = load_benchmark(f"gpqa[seed=1]={file}").samples
    assert [s.choices for s in other] != [s.choices for s in bench.samples]
    with pytest.raises(R1V2Error, match="gpqa takes the option seed, not shuffle"):
        load_benchmark(f"gpqa[shuffle=1]={file}")


def test_gpqa_through_the_cli(tmp_path, capsys):
    from r1v2.cli import main

    file = tmp_path / "gpqa.csv"
    write_gpqa(file, 4)
    samples = load_benchmark(f"gpqa={file}").samples
    # two right (one by letter, one by the option's text), two wrong
    answers = [f"\\boxed{{{samples[0].answer}}}", f"The answer is {samples[1].answer}."]
    wrong = [c for c in "ABCD" if c != samples[2].answer][0]
    answers += [f"\\boxed{{{wrong}}}", "I cannot tell."]
    resp = tmp_path / "r.jsonl"
    resp.write_text(
        "".join(
            json.dumps({"id": s.id, "run": 0, "response": a}) + "\n"
            for s, a in zip(samples, answers)
        )
    )
    out = tmp_path / "o"
    assert (
        main(["eval", "--responses", str(resp), "--bench", f"gpqa={file}", "--out", str(out)]) == 0
    )
    result = json.loads((out / "results.json").read_text())["benchmarks"]["gpqa"]
    assert result["pass@1"] == 0.5
