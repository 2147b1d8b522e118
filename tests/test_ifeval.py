"""IFEval: Google's layout read, lm-eval's checkers applied, the four accuracies by hand."""

import json

import pytest
from fixtures.eval_benchmarks import write_jsonl, write_parquet

from r1v2.cli import main
from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import load_benchmark
from r1v2.eval.ifeval import PUNKT_FILES, answer_part, ensure_punkt, follow

pytest.importorskip("lm_eval", reason="IFEval's checkers: pip install 'r1v2[ifeval]'")


@pytest.fixture(autouse=True, scope="module")
def nltk_data(tmp_path_factory):
    """The Punkt model is written into a folder of the test's, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R1V2_NLTK_DATA", str(tmp_path_factory.mktemp("nltk_data")))
        yield


END = "Is there anything else I can help with?"
# (row in input_data.jsonl's layout, response, strict verdicts, loose verdicts)
CASES = [
    (  # the reasoning has capitals and a comma; the answer after </think> has neither
        {"key": 1, "prompt": "Write in lowercase, without commas.",
         "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
         "kwargs": [{}, {}]},
        "<think>Let me THINK, carefully.</think>all lowercase and no commas here",
        [True, True], [True, True],
    ),
    (  # a last line after the end phrase: loose drops it, strict does not
        {"key": 2, "prompt": f"End with '{END}'.",
         "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": END}]},
        f"Sure.\n{END}\n*note*",
        [False], [True],
    ),
    (  # a title, but 3 words where at least 5 were asked
        {"key": 3, "prompt": "A titled answer of at least 5 words.",
         "instruction_id_list": ["length_constraints:number_words", "detectable_format:title"],
         "kwargs": [{"relation": "at least", "num_words": 5}, {}]},
        "<<Title>> one two",
        [False, True], [False, True],
    ),
    (  # Punkt knows "Mr." is no sentence end: 2 sentences (a naive split counts 3)
        {"key": 4, "prompt": "Fewer than 3 sentences.",
         "instruction_id_list": ["length_constraints:number_sentences"],
         "kwargs": [{"relation": "less than", "num_sentences": 3}]},
        "Mr. Smith went to Washington. He slept.",
        [True], [True],
    ),
    (  # no response given: nothing followed
        {"key": 5, "prompt": "No commas.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
        None,
        [False], [False],
    ),
]  # fmt: skip


def test_each_case_gets_lm_evals_verdicts():
    for row, response, strict, loose in CASES[:4]:
        got = follow(response, row["prompt"], row["instruction_id_list"], row["kwargs"])
        assert (list(got.strict), list(got.loose)) == (strict, loose), row["key"]


def test_the_answer_part_is_after_the_last_think():
    assert answer_part("<think>a</think> b </think> c ") == "c"
    assert answer_part("no think block ") == "no think block "


def test_the_punkt_model_is_written_once_and_whole(tmp_path):
    ensure_punkt(tmp_path)
    folder = tmp_path / "tokenizers/punkt_tab/english"
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUNKT_FILES)
    abbrevs = (folder / "abbrev_types.txt").read_text().split("\n")
    assert {"mr", "dr", "p.m", "jan"} <= set(abbrevs)
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer, load_punkt_params

    params = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert len(params.ortho_context) > 10_000 and params.collocations
    text = "Dr. Who met Mr. Smith at 3 p.m. on Jan. 5. They talked."
    assert len(PunktTokenizer("english").tokenize(text)) == 2
    assert str(tmp_path) in nltk.data.path
    before = (folder / "ortho_context.tab").stat().st_mtime_ns
    ensure_punkt(tmp_path)
    assert (folder / "ortho_context.tab").stat().st_mtime_ns == before


def write_ifeval(path, fmt: str):
    rows = [row for row, *_ in CASES]
    if fmt == "parquet":  # the HF export: every kwargs dict has every key, most of them null
        keys = sorted({k for r in rows for d in r["kwargs"] for k in d})
        rows = [{**r, "kwargs": [{k: d.get(k) for k in keys} for d in r["kwargs"]]} for r in rows]
        return write_parquet(path / "train.parquet", rows)
    return write_jsonl(path / "input_data.jsonl", rows)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_ifeval_through_the_cli_gives_the_four_accuracies(tmp_path, fmt):
    data = write_ifeval(tmp_path, fmt)
    bench = load_benchmark(f"ifeval={data}")
    assert [s.question for s in bench.samples] == [row["prompt"] for row, *_ in CASES]
    assert bench.samples[2].metadata["kwargs"][0] == {"relation": "at least", "num_words": 5}
    resp = write_jsonl(
        tmp_path / "responses.jsonl",
        [{"id": str(r["key"]), "run": 0, "response": t} for r, t, *_ in CASES if t is not None],
    )
    out = tmp_path / "out"
    assert main(["eval", "--responses", str(resp), "--bench", f"ifeval={data}", "--out", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "results.json").read_text())["benchmarks"]["ifeval"]
    # prompts: strict 1 and 4 of 5; loose 1, 2 and 4. Instructions: 7; strict 2+0+1+1, loose 2+1+1+1
    assert result["pass@1"] == pytest.approx(2 / 5)
    got = result["ifeval"]
    assert got["prompt_level_strict"] == pytest.approx(2 / 5)
    assert got["prompt_level_loose"] == pytest.approx(3 / 5)
    assert got["inst_level_strict"] == pytest.approx(4 / 7)
    assert got["inst_level_loose"] == pytest.approx(5 / 7)
    assert result["categories"]["length_constraints"]["pass@1"] == pytest.approx(1 / 2)


def test_an_unknown_instruction_is_one_line_naming_file_line_and_field(tmp_path, capsys):
    rows = [row for row, *_ in CASES[:2]]
    rows[1] = {**rows[1], "instruction_id_list": ["startend:no_such_check"]}
    data = write_jsonl(tmp_path / "input_data.jsonl", rows)
    resp = write_jsonl(tmp_path / "r.jsonl", [{"id": "1", "run": 0, "response": "x"}])
    args = ["eval", "--responses", str(resp), "--bench", f"ifeval={data}", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "input_data.jsonl:2: field 'instruction_id_list'" in err
    assert "no_such_check" in err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ([{}], "expected 2 dicts"),
        (
            [{"relation": "at least", "num_words": 5}, {"foo": 1}],
            "unexpected keyword argument 'foo'",
        ),
        ([{"relation": "about", "num_words": 5}, {}], "'length_constraints:number_words'"),
    ],
)
def test_kwargs_that_do_not_match_the_instructions_are_refused(tmp_path, kwargs, message):
    row = {**CASES[2][0], "kwargs": kwargs}
    data = write_jsonl(tmp_path / "input_data.jsonl", [row])
    with pytest.raises(R1V2Error, match=f"input_data.jsonl:1: field 'kwargs': .*{message}"):
        load_benchmark(f"ifeval={data}")
