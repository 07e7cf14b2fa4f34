"""Dataset loading: names, paths, row selection, GSM8K/StrategyQA answers, and line-numbered errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import agentflow.eval
from agentflow._exceptions import ConfigError, DatasetError, MissingDependencyError
from agentflow.eval._data import (
    BUNDLED_DATA_DIR,
    DATASETS,
    Example,
    from_hf_dataset,
    from_records,
    load_dataset,
    parse_number,
)

DATA = Path(__file__).parent / "data"


def _write(tmp_path: Path, lines: list[str], name: str = "mine.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(**fields: object) -> str:
    base: dict[str, object] = {"id": "q1", "question": "Who?", "answer": "Ann", "aliases": []}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_load_by_name_gives_typed_examples_with_paragraphs() -> None:
    examples = load_dataset("hotpotqa", data_dir=DATA)
    assert len(examples) == 5
    first = examples[0]
    assert isinstance(first, Example)
    assert first.id == "5a8c7595554299585d9e36b6"
    assert first.answer == "Chief of Protocol"
    assert first.metric == "text"
    assert first.type == "bridge"
    assert len(first.paragraphs) == 10
    assert {p.title for p in first.supporting} == {"Shirley Temple", "Kiss and Tell (1945 film)"}
    assert first.answers == ("Chief of Protocol",)
    assert len(set(examples)) == 5  # examples are hashable (extra is left out of the hash)


def test_names_are_case_insensitive_and_cover_all_four_sets() -> None:
    assert set(DATASETS) == {"hotpotqa", "2wikimultihopqa", "strategyqa", "gsm8k"}
    assert load_dataset("HotpotQA", data_dir=DATA, limit=1)[0].type == "bridge"
    two = load_dataset("2wikimultihopqa", data_dir=DATA)
    assert two[0].extra["evidences"][0] == ["Forbidden Ground", "director", "Pál Gábor"]


def test_limit_and_rows_select_lines() -> None:
    assert [e.id for e in load_dataset("hotpotqa", data_dir=DATA, limit=2)] == [
        "5a8c7595554299585d9e36b6",
        "5a85ea095542994775f606a8",
    ]
    picked = load_dataset("hotpotqa", data_dir=DATA, rows=[4, 0])
    assert [e.type for e in picked] == ["comparison", "bridge"]
    assert len(load_dataset("hotpotqa", data_dir=DATA, rows=[3, 4, 0], limit=2)) == 2
    assert load_dataset("hotpotqa", data_dir=DATA, limit=0) == []


def test_row_out_of_range_says_how_many_rows_exist() -> None:
    with pytest.raises(DatasetError, match=r"row 9 is out of range: the file has 5 rows"):
        load_dataset("hotpotqa", data_dir=DATA, rows=[0, 9])


def test_gsm8k_exposes_the_final_number() -> None:
    ex = load_dataset("gsm8k", data_dir=DATA)
    assert ex[0].metric == "number"
    assert ex[0].number == 18.0
    assert ex[2].number == 70000.0
    assert "solution" in ex[0].extra
    assert ex[0].decomposition[0].question == "How many eggs does Janet sell?"


def test_parse_number_handles_raw_gsm8k_and_formatting() -> None:
    assert parse_number("She makes 9 * 2 = $18 every day.\n#### 1,018") == 1018.0
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("-7") == -7.0
    assert parse_number("no number here") is None


def test_strategyqa_answers_are_yes_no_and_facts_kept() -> None:
    ex = load_dataset("strategyqa", data_dir=DATA)
    assert ex[0].metric == "yesno"
    assert {e.answer for e in ex} <= {"yes", "no"}
    assert ex[0].facts and ex[0].paragraphs == ()
    assert ex[0].decomposition[0].answer is None
    assert ex[0].extra["answer_bool"] is False


def test_path_works_and_metric_is_inferred_from_the_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(answer="42")], name="gsm8k_small.jsonl")
    assert load_dataset(path)[0].metric == "number"
    other = _write(tmp_path, [_row()], name="custom.jsonl")
    assert load_dataset(str(other))[0].metric == "text"
    assert load_dataset(other, metric="yesno")[0].metric == "yesno"


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(), _row(id="q2"), '{"id": "q3", "question": '])
    with pytest.raises(DatasetError, match=r"mine\.jsonl:3: invalid JSON") as info:
        load_dataset(path)
    assert info.value.line == 3
    assert info.value.path == str(path)
    assert isinstance(info.value, ConfigError)


def test_bad_json_reports_the_real_column_what_is_wrong_and_the_fix(tmp_path: Path) -> None:
    line = '{"id": "q3", "question": "Who sang?", "answer": "Ann" "aliases": []}'  # no comma before "aliases"
    assert line.index('"aliases"') + 1 == 55
    path = _write(tmp_path, [_row(), _row(id="q2"), line])
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: invalid JSON at column 55: Expecting ',' delimiter")
    assert """, after '... "Who sang?", "answer": "Ann" ', before '"aliases": []}'. """ in msg
    assert "keys and strings in double quotes, a comma between fields" in msg
    cut = '{"id": "q1", "question": "Who?", "answer": "Ann"'  # the error is just past the last character
    end = _write(tmp_path, [cut], name="cut.jsonl")
    with pytest.raises(DatasetError, match=rf"cut\.jsonl:1: invalid JSON at column {len(cut) + 1}: .* end of the line"):
        load_dataset(end)


def test_only_newline_ends_a_line(tmp_path: Path) -> None:
    """A form feed or U+2028 inside a string (valid JSON) neither splits the line nor shifts line numbers."""
    rows = [_row(question="Who?\u2028Really?"), _row(id="q2", answer="A\x0cB"), '{"id": "q3",, }']
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(json.dumps(json.loads(r), ensure_ascii=False) for r in rows[:2]) + "\n" + rows[2] + "\n")
    assert "\u2028" in path.read_text(encoding="utf-8")
    with pytest.raises(DatasetError, match=r"raw\.jsonl:3: invalid JSON at column 13: Expecting property name"):
        load_dataset(path)
    first, second = load_dataset(path, limit=2)  # lines past the limit are not read
    assert first.question == "Who?\u2028Really?" and second.answer == "A\x0cB"


def test_a_byte_order_mark_is_skipped_and_bad_bytes_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _row().encode() + b"\r\n" + _row(id="q2").encode() + b"\r\n")
    assert [e.id for e in load_dataset(path)] == ["q1", "q2"]
    path.write_bytes(_row().encode() + b"\n" + b'{"id": "q2", "question": "Caf\xe9?", "answer": "x"}\n')
    with pytest.raises(DatasetError, match=r"bom\.jsonl:2: not UTF-8 text at byte 30 .*save the file as UTF-8"):
        load_dataset(path)


def test_missing_field_names_the_field_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(), _row(id="q2", answer=...)])
    with pytest.raises(DatasetError, match=r":2: missing field 'answer'"):
        load_dataset(path)


def test_wrong_types_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r":1: field 'question' must be a string, got list"):
        load_dataset(_write(tmp_path, [_row(question=["x"])]))
    with pytest.raises(DatasetError, match=r"field 'aliases' must be a list of strings"):
        load_dataset(_write(tmp_path, [_row(aliases="Annie")]))
    with pytest.raises(DatasetError, match=r"context\[0\]\.is_supporting must be true or false"):
        load_dataset(_write(tmp_path, [_row(context=[{"title": "t", "text": "x", "is_supporting": "y"}])]))
    with pytest.raises(DatasetError, match=r"must be a JSON object, got list"):
        load_dataset(_write(tmp_path, ["[1, 2]"]))


def test_numeric_id_is_accepted_and_duplicates_rejected(tmp_path: Path) -> None:
    assert load_dataset(_write(tmp_path, [_row(id=7)]))[0].id == "7"
    with pytest.raises(DatasetError, match=r":2: duplicate id 'q1' \(first on line 1\)"):
        load_dataset(_write(tmp_path, [_row(), _row()]))


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(), "", _row(id="q2", question=5)])
    with pytest.raises(DatasetError, match=r":3: "):
        load_dataset(path)


def test_unknown_name_lists_the_names_and_mentions_paths() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("squad", data_dir=DATA)
    msg = str(info.value)
    assert "unknown dataset 'squad'" in msg
    assert all(name in msg for name in DATASETS)
    assert "path" in msg


def test_missing_file_for_a_name_or_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("gsm8k", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.jsonl")


def test_the_bundled_sets_load_by_name_with_no_data_dir() -> None:
    """`pip install` brings the evaluation sets: nothing outside the package is read."""
    sizes = {"hotpotqa": 500, "2wikimultihopqa": 164, "strategyqa": 229, "gsm8k": 1319}
    for name, rows in sizes.items():
        examples = load_dataset(name)
        assert len(examples) == rows, name
    assert (BUNDLED_DATA_DIR / "SOURCES.md").is_file()
    assert BUNDLED_DATA_DIR.resolve().is_relative_to(Path(agentflow.eval.__file__).resolve().parent)


def test_from_records_maps_columns_and_hf_hotpot_context() -> None:
    record = {
        "_id": "abc",
        "q": "Which is older?",
        "answers": {"text": ["X", "x one"]},
        "context": {"title": ["X", "Y"], "sentences": [["X is old.", " Very."], ["Y is new."]]},
        "supporting_facts": {"title": ["X"], "sent_id": [0]},
    }
    [ex] = from_records([record], {"id": "_id", "question": "q", "answer": "answers.text"})
    assert (ex.id, ex.question, ex.answer, ex.aliases) == ("abc", "Which is older?", "X", ("x one",))
    assert [p.is_supporting for p in ex.paragraphs] == [True, False]
    assert ex.paragraphs[0].text == "X is old.  Very."
    with pytest.raises(DatasetError, match=r"<records>:0: missing field 'answer'"):
        from_records([{"id": "1", "question": "q"}])


def test_from_hf_dataset_without_datasets_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match="pip install datasets"):
        from_hf_dataset([], {})
