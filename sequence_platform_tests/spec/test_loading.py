"""Loading definitions: the example folder loads with the schemas worked out below, and every
kind of mistake is refused with a problem naming the file, the definition and the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from sequence_platform.engine import assemble_snapshot, sequence_rows
from sequence_platform.spec import DefinitionError, DefinitionProblem, load_catalog
from sequence_platform.spec.types import TIMESTAMP

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ("engagement.json", "items.json", "engagement_enriched.json")
"""Copied into each test folder; ``executors.py`` is not: its executor is registered once, by
loading the real folder, and a second file may not register the same name."""

SEQUENCE: dict[str, Any] = {
    "kind": "sequence",
    "name": "recent_clicks",
    "signal": "engagement_enriched",
    "fields": ["item_id", "event_type"],
    "max_length": 10,
    "lookback_days": 7,
}
SIGNAL: dict[str, Any] = {"kind": "signal", "name": "clicks", "source": "engagement"}
CUTOFF = datetime(2026, 3, 8, tzinfo=UTC)


@pytest.fixture(autouse=True, scope="module")
def _example_executors_registered() -> None:
    load_catalog(REPO / "definitions")


def sequence(**changes: Any) -> dict[str, Any]:
    """``SEQUENCE`` with ``changes``; a change to ``...`` removes the field."""
    return {k: v for k, v in {**SEQUENCE, **changes}.items() if v is not ...}


def signal(**changes: Any) -> dict[str, Any]:
    return {**SIGNAL, **changes}


def definitions_folder(folder: Path, files: dict[str, Any]) -> Path:
    """The example source, feature table and signal, plus ``files`` (text, or JSON data)."""
    folder.mkdir(exist_ok=True)
    for name in EXAMPLES:
        (folder / name).write_text((REPO / "definitions" / name).read_text())
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def refused(folder: Path) -> DefinitionError:
    with pytest.raises(DefinitionError) as raised:
        load_catalog(folder)
    return raised.value


# -- the real definitions ---------------------------------------------------------------------


def test_the_example_definitions_load_with_their_derived_schemas() -> None:
    catalog = load_catalog(REPO / "definitions")
    kinds = {loaded.spec.name: loaded.spec.kind for loaded in catalog.definitions}
    assert kinds == {
        "engagement": "source",
        "items": "feature_table",
        "engagement_enriched": "signal",
        "recent_engagement": "sequence",
        "recent_saves": "sequence",
        "saves_training": "training_set",
    }
    assert catalog.training_sets["saves_training"].prefix("recent_saves") == "recent_saves__"
    assert catalog.origin("recent_engagement").endswith("definitions/recent_engagement.py")
    assert catalog.origin("recent_saves").endswith("definitions/recent_saves.json")

    # The source's required fields, then its declared ones; then the enrichment; then the
    # column the executor adds.
    assert list(catalog.signal_schema("engagement_enriched").items()) == [
        ("event_id", pl.String()),
        ("user_id", pl.Int64()),
        ("item_id", pl.Int64()),
        ("event_type", pl.String()),
        ("event_time", TIMESTAMP),
        ("surface", pl.String()),
        ("dwell_ms", pl.Int64()),
        ("category", pl.String()),
        ("embedding", pl.List(pl.Float32())),
        ("dwell_bucket", pl.Int32()),
    ]
    assert list(catalog.feature_schema("items").items()) == [
        ("item_id", pl.Int64()),
        ("updated_at", TIMESTAMP),
        ("category", pl.String()),
        ("embedding", pl.List(pl.Float32())),
    ]
    # Identity and time first, then the definition's fields in its order.
    assert list(catalog.sequence_element_schema("recent_engagement")) == [
        "event_id",
        "event_time",
        "item_id",
        "event_type",
        "surface",
        "dwell_bucket",
        "category",
        "embedding",
    ]
    assert list(catalog.served_schema("recent_saves").items()) == [
        ("event_id", pl.String()),
        ("event_time", TIMESTAMP),
        ("item_id", pl.Int64()),
        ("event_type", pl.String()),
        ("category", pl.String()),
        ("current_category", pl.String()),
        ("age_seconds", pl.Float64()),
    ]
    saves = catalog.sequences["recent_saves"]
    assert (saves.max_length, saves.lookback_days, saves.table_name) == (50, 14, "recent_saves/v1")


# -- one mistake at a time --------------------------------------------------------------------

Expected = tuple[str, str, str, str]
"""``(file, definition, field, a fragment of the message)``."""

MISTAKES: dict[str, tuple[dict[str, Any], list[Expected]]] = {
    "invalid JSON": (
        {"broken.json": '{"kind": "source",\n  "name": "x",,\n}'},
        [
            (
                "broken.json",
                "file",
                "",
                "not valid JSON at line 2, column 15: "
                "Expecting property name enclosed in double quotes",
            )
        ],
    ),
    "unknown kind": (
        {"s.json": sequence(kind="sequense")},
        [
            (
                "s.json",
                "sequense 'recent_clicks'",
                "",
                "'kind' must be one of source, feature_table, signal, sequence",
            )
        ],
    ),
    "missing kind": (
        {"s.json": sequence(kind=...)},
        [
            (
                "s.json",
                "definition 'recent_clicks'",
                "",
                "missing 'kind' (source, feature_table, signal or sequence)",
            )
        ],
    ),
    "misspelt field": (
        {"s.json": sequence(lookback_days=..., lookback_day=7)},
        [
            ("s.json", "sequence 'recent_clicks'", "lookback_days", "Field required"),
            (
                "s.json",
                "sequence 'recent_clicks'",
                "lookback_day",
                "unknown field (check the spelling)",
            ),
        ],
    ),
    "bad types": (
        {
            "src.json": {
                "kind": "source",
                "name": "other",
                "fields": {"dwell": "int", "tags": "list[foo]", "ok": "list[int64]"},
            }
        },
        [
            ("src.json", "source 'other'", "fields.dwell", "unknown type 'int'; use one of"),
            ("src.json", "source 'other'", "fields.tags", "unknown type 'foo'; use one of"),
        ],
    ),
    "bad name": (
        {"s.json": sequence(name="Recent-Clicks")},
        [("s.json", "sequence 'Recent-Clicks'", "name", "should match pattern")],
    ),
    "max_length 0": (
        {"s.json": sequence(max_length=0)},
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "max_length",
                "Input should be greater than or equal to 1",
            )
        ],
    ),
    "unknown source": (
        {"sig.json": signal(source="engagment")},
        [
            (
                "sig.json",
                "signal 'clicks'",
                "source",
                "unknown source 'engagment' (defined: engagement)",
            )
        ],
    ),
    "unknown signal": (
        {"s.json": sequence(signal="engagement_enrich")},
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "signal",
                "unknown signal 'engagement_enrich' (defined: engagement_enriched)",
            )
        ],
    ),
    "unknown feature table and field": (
        {
            "sig.json": signal(
                enrich=[
                    {"table": "itemz", "fields": ["category"]},
                    {"table": "items", "fields": ["category", "colour"]},
                ]
            )
        },
        [
            (
                "sig.json",
                "signal 'clicks'",
                "enrich[0].table",
                "unknown feature table 'itemz' (defined: items)",
            ),
            (
                "sig.json",
                "signal 'clicks'",
                "enrich[1].fields[1]",
                "'colour' is not a field of feature table 'items' (available: category, embedding)",
            ),
        ],
    ),
    "duplicate name across files": (
        {"a.json": sequence(), "b.json": sequence(max_length=5), "x.json": sequence(name="items")},
        [
            ("b.json", "sequence 'recent_clicks'", "name", "duplicate name: 'recent_clicks'"),
            ("x.json", "sequence 'items'", "name", "duplicate name: 'items'"),
        ],
    ),
    "sequence field not in the signal": (
        {"s.json": sequence(fields=["item_id", "event_type", "categry"])},
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "fields[2]",
                "'categry' does not exist in signal 'engagement_enriched' (available: event_id, "
                "user_id, item_id, event_type, event_time, surface, dwell_ms, category, "
                "embedding, dwell_bucket)",
            )
        ],
    ),
    "filter syntax": (
        {"s.json": sequence(filter="event_type IN ('save'")},
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "filter",
                "cannot evaluate \"event_type IN ('save'\": ",
            )
        ],
    ),
    "filter on an unknown column": (
        {"s.json": sequence(filter="evnt_type = 'save'")},
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "filter",
                'cannot evaluate "evnt_type = \'save\'": unable to find column "evnt_type"',
            )
        ],
    ),
    "filter that is not boolean": (
        {"s.json": sequence(filter="dwell_ms + 1"), "sig.json": signal(filter="surface")},
        [
            ("sig.json", "signal 'clicks'", "filter", "'surface' is String, not a boolean"),
            (
                "s.json",
                "sequence 'recent_clicks'",
                "filter",
                "'dwell_ms + 1' is Int64, not a boolean",
            ),
        ],
    ),
    "signal filter on an enriched column": (
        {
            "sig.json": signal(
                filter="category = 'art'", enrich=[{"table": "items", "fields": ["category"]}]
            )
        },
        [("sig.json", "signal 'clicks'", "filter", 'unable to find column "category"')],
    ),
    "unknown executor": (
        {"sig.json": signal(executors=[{"name": "dwell_buckets"}])},
        [
            (
                "sig.json",
                "signal 'clicks'",
                "executors[0].name",
                "unknown executor 'dwell_buckets' (known: ",
            )
        ],
    ),
    "executor with a wrong param": (
        {
            "sig.json": signal(
                executors=[{"name": "dwell_bucket", "params": {"edges": [1000], "edge": [1]}}]
            )
        },
        [
            (
                "sig.json",
                "signal 'clicks'",
                "executors[0]",
                "executor 'dwell_bucket' failed: unknown param 'edge' (accepted params: edges)",
            )
        ],
    ),
    "executor refusing its params": (
        {"sig.json": signal(executors=[{"name": "dwell_bucket", "params": {"edges": [5, 1]}}])},
        [
            (
                "sig.json",
                "signal 'clicks'",
                "executors[0]",
                "executor 'dwell_bucket' failed: edges must be a non-empty ascending list",
            )
        ],
    ),
    "request_enrich without the table key": (
        {
            "s.json": sequence(
                fields=["event_type", "category"],
                request_enrich=[{"table": "items", "fields": ["category"], "as": "current_"}],
            )
        },
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "request_enrich[0].table",
                "joining 'items' needs its key 'item_id' among the columns "
                "(event_id, event_time, event_type, category)",
            )
        ],
    ),
    "request_enrich clashing with a stored field": (
        {
            "s.json": sequence(
                fields=["item_id", "category"],
                request_enrich=[{"table": "items", "fields": ["category"]}],
            )
        },
        [
            (
                "s.json",
                "sequence 'recent_clicks'",
                "request_enrich[0].fields[0]",
                "'category' already exists; give the enrichment a prefix with 'as'",
            )
        ],
    ),
    "python module raising on import": (
        {"boom.py": "raise RuntimeError('no network at import time')\n"},
        [
            (
                "boom.py",
                "module",
                "",
                "cannot import: RuntimeError: no network at import time",
            )
        ],
    ),
    "python definition with a wrong reference": (
        {
            "recent.py": "from sequence_platform.spec import SequenceSpec\n"
            "clicks = SequenceSpec(name='recent_clicks', signal='engagement_enriched', "
            "fields=['item_id', 'categry'], max_length=5, lookback_days=7)\n"
        },
        [
            (
                "recent.py",
                "sequence 'recent_clicks'",
                "fields[1]",
                "'categry' does not exist in signal 'engagement_enriched'",
            )
        ],
    ),
    "a field named like the partition column": (
        {
            "clicks.json": {"kind": "source", "name": "clicks", "fields": {"dt": "string"}},
            "items.json": {
                "kind": "feature_table",
                "name": "items",
                "key": "dt",
                "as_of": "updated_at",
                "fields": {"category": "string"},
            },
        },
        [
            ("clicks.json", "source 'clicks'", "fields.dt.[key]", "the tables' partition column"),
            ("items.json", "feature_table 'items'", "key", "'dt' is the tables' partition"),
        ],
    ),
    "a list holding a non-object": (
        {"list.json": [sequence(), sequence(name="other", max_length=0), 5]},
        [
            ("list.json", "sequence 'other' (item 1)", "max_length", "greater than or equal to 1"),
            ("list.json", "definition (item 2)", "", "a definition is a JSON object"),
        ],
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_refused_naming_file_definition_and_field(
    tmp_path: Path, mistake: str
) -> None:
    files, expected = MISTAKES[mistake]
    folder = definitions_folder(tmp_path / "definitions", files)
    error = refused(folder)
    found = [(Path(p.origin).name, p.definition, p.field) for p in error.problems]
    assert found == [(file, definition, field) for file, definition, field, _ in expected]
    for problem, (file, definition, field, message) in zip(error.problems, expected, strict=True):
        assert problem.origin == str(folder / file)
        assert message in problem.message
        where = f"{definition}, field '{field}'" if field else definition
        assert f"  - {folder / file}: {where}: " in str(error)
    count = len(expected)
    assert str(error).startswith(
        f"invalid definitions ({'1 problem' if count == 1 else f'{count} problems'}):\n"
    )


def test_a_duplicate_names_the_file_that_defined_the_name_first(tmp_path: Path) -> None:
    folder = definitions_folder(tmp_path, {"a.json": sequence(), "b.json": sequence()})
    (problem,) = refused(folder).problems
    assert str(problem) == (
        f"{folder / 'b.json'}: sequence 'recent_clicks', field 'name': "
        f"duplicate name: 'recent_clicks' is already defined in {folder / 'a.json'}"
    )


def test_an_executor_from_a_python_file_is_checked_against_its_signature(
    tmp_path: Path,
) -> None:
    executor_module = (
        "import polars as pl\n"
        "from sequence_platform.spec import executor\n\n"
        "@executor('test_loading_scaled_dwell')\n"
        "def scaled_dwell(frame: pl.LazyFrame, *, factor: float) -> pl.LazyFrame:\n"
        "    return frame.with_columns((pl.col('dwell_ms') * factor).alias('scaled_dwell'))\n"
    )
    good = signal(
        name="scaled", executors=[{"name": "test_loading_scaled_dwell", "params": {"factor": 0.5}}]
    )
    folder = definitions_folder(
        tmp_path,
        {
            "scaling.py": executor_module,
            "good.json": good,
            "bad.json": signal(
                executors=[{"name": "test_loading_scaled_dwell", "params": {"factr": 2}}]
            ),
        },
    )
    (problem,) = refused(folder).problems
    assert (Path(problem.origin).name, problem.definition, problem.field) == (
        "bad.json",
        "signal 'clicks'",
        "executors[0]",
    )
    assert problem.message == (
        "executor 'test_loading_scaled_dwell' failed: unknown param 'factr' "
        "(accepted params: factor)"
    )
    (folder / "bad.json").unlink()
    catalog = load_catalog(folder)
    assert catalog.signal_schema("scaled")["scaled_dwell"] == pl.Float64


# -- many mistakes at once --------------------------------------------------------------------


def test_every_reference_problem_is_reported_together(tmp_path: Path) -> None:
    folder = definitions_folder(
        tmp_path,
        {
            "clicks.json": signal(source="engagment"),
            "recent.json": sequence(
                fields=["event_type", "categry"],
                filter="evnt_type = 'save'",
                request_enrich=[{"table": "items", "fields": ["category"], "as": "now_"}],
            ),
            "orphan.json": sequence(name="orphan", signal="clicks"),
            "twice.json": sequence(name="items"),
        },
    )
    error = refused(folder)
    assert [(Path(p.origin).name, p.definition, p.field) for p in error.problems] == [
        ("twice.json", "sequence 'items'", "name"),
        ("clicks.json", "signal 'clicks'", "source"),
        ("orphan.json", "sequence 'orphan'", "signal"),
        ("recent.json", "sequence 'recent_clicks'", "filter"),
        ("recent.json", "sequence 'recent_clicks'", "fields[1]"),
        ("recent.json", "sequence 'recent_clicks'", "request_enrich[0].table"),
    ]
    assert error.problems[2].message == "signal 'clicks' is itself invalid"
    assert str(error).startswith("invalid definitions (6 problems):\n")


def test_every_file_that_cannot_be_read_is_reported_together(tmp_path: Path) -> None:
    folder = definitions_folder(
        tmp_path,
        {
            "a_broken.json": "{",
            "b_kind.json": sequence(kind="sequense"),
            "c_boom.py": "import not_a_module_anywhere\n",
            "d_typo.json": sequence(name="typo", max_lenght=3),
        },
    )
    error = refused(folder)
    assert [(Path(p.origin).name, p.definition, p.field) for p in error.problems] == [
        ("c_boom.py", "module", ""),
        ("a_broken.json", "file", ""),
        ("b_kind.json", "sequense 'recent_clicks'", ""),
        ("d_typo.json", "sequence 'typo'", "max_lenght"),
    ]
    assert error.problems[0].message == (
        "cannot import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    )
    assert error.problems[1].message == (
        "not valid JSON at line 1, column 2: Expecting property name enclosed in double quotes"
    )


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    (problem,) = refused(tmp_path / "nowhere").problems
    assert problem == DefinitionProblem(
        str(tmp_path / "nowhere"), "definitions folder", "", "no such folder"
    )


# -- found while writing these tests ---------------------------------------------------------


BAD_PYTHON_DEFINITION = (
    "from sequence_platform.spec import SequenceSpec\n"
    "clicks = SequenceSpec(name='recent_clicks', signal='engagement_enriched', "
    "fields=['item_id'], max_length=0, lookback_days=7)\n"
)


def test_a_bad_python_definition_names_the_file_and_the_field(tmp_path: Path) -> None:
    folder = definitions_folder(tmp_path, {"bad.py": BAD_PYTHON_DEFINITION})
    (problem,) = refused(folder).problems
    assert (problem.origin, problem.field) == (str(folder / "bad.py"), "max_length")
    assert problem.message == "Input should be greater than or equal to 1"


def test_a_bad_python_definition_names_the_definition(tmp_path: Path) -> None:
    folder = definitions_folder(tmp_path, {"bad.py": BAD_PYTHON_DEFINITION})
    (problem,) = refused(folder).problems
    assert problem.definition == "sequence 'recent_clicks'"


def test_a_sequence_listing_user_id_is_refused_or_works(tmp_path: Path) -> None:
    folder = definitions_folder(tmp_path, {"s.json": sequence(fields=["user_id", "item_id"])})
    try:
        catalog = load_catalog(folder)
    except DefinitionError as error:
        assert [p.field for p in error.problems] == ["fields[0]"]
        return
    spec = catalog.sequences["recent_clicks"]
    rows = pl.LazyFrame(schema=catalog.signal_schema("engagement_enriched"))
    snapshot = assemble_snapshot(sequence_rows(rows, spec), spec, CUTOFF).collect()
    assert snapshot.height == 0


def test_an_executor_failure_is_one_line(tmp_path: Path) -> None:
    module = (
        "import polars as pl\n"
        "from sequence_platform.spec import executor\n\n"
        "@executor('test_loading_needs_colour')\n"
        "def needs_colour(frame: pl.LazyFrame) -> pl.LazyFrame:\n"
        "    return frame.with_columns(pl.col('colour').alias('shade'))\n"
    )
    folder = definitions_folder(
        tmp_path,
        {
            "colour.py": module,
            "sig.json": signal(executors=[{"name": "test_loading_needs_colour"}]),
        },
    )
    (problem,) = refused(folder).problems
    assert problem.field == "executors[0]"
    assert 'unable to find column "colour"' in problem.message
    assert "\n" not in problem.message


def test_a_file_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = definitions_folder(tmp_path, {})
    (folder / "latin1.json").write_bytes(
        b'{"kind": "sequence",\n "name": "r\xe9cent", "signal": "engagement_enriched"}'
    )
    (folder / "latin1.py").write_bytes(b"name = 'r\xe9cent'\n")
    problems = {Path(p.origin).name: p for p in refused(folder).problems}
    assert problems["latin1.json"].definition == "file"
    assert problems["latin1.json"].message == (
        "not valid UTF-8 at line 2 (byte 32: b'\\xe9'); save the file as UTF-8"
    )
    assert problems["latin1.py"].definition == "module"
    assert "utf-8" in problems["latin1.py"].message.lower()


def test_a_training_set_must_name_known_sequences_and_a_spine_folder(tmp_path: Path) -> None:
    training = {
        "kind": "training_set",
        "name": "clicks_training",
        "spine": "engagement",
        "sequences": ["recent_clicks", "recent_clicks"],
    }
    folder = definitions_folder(tmp_path, {"training.json": training})
    problems = [(p.definition, p.field, p.message) for p in refused(folder).problems]
    assert problems == [
        (
            "training_set 'clicks_training'",
            "sequences[0]",
            "unknown sequence 'recent_clicks' (defined: none defined)",
        ),
        (
            "training_set 'clicks_training'",
            "sequences[1]",
            "unknown sequence 'recent_clicks' (defined: none defined)",
        ),
        ("training_set 'clicks_training'", "sequences", "a sequence is listed twice"),
        (
            "training_set 'clicks_training'",
            "spine",
            "'engagement' is the name of a definition; a spine is a landing folder of its own",
        ),
    ]
