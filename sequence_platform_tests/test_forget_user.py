"""Forgetting a user: afterwards no reader returns their events — the HTTP API at past and
present instants, ``read_sequences``, the Delta tables read directly, the data files on disk
and the read service's snapshot files — and neither re-materializing the days from landing
files that still hold the user nor a replay of the stream brings them back.

Everything is real: landing files and the local stream, the batch and the micro-batches
through Dagster, the endpoint through uvicorn and the command as a subprocess.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import polars as pl
import pyarrow as pa
import pytest
from fastapi import FastAPI

from sequence_platform.cli import main
from sequence_platform.ingest.stream import LocalStream
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.runner import materialize_days
from sequence_platform.runtime.forget import forget_users
from sequence_platform.runtime.live import ContinuousIndexer, IndexerSettings
from sequence_platform.runtime.microbatch import RealtimeWriter
from sequence_platform.runtime.reads import read_sequences
from sequence_platform.serving.app import create_app
from sequence_platform.serving.store import SnapshotStore
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog, load_catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.realtime_runs import produce_and_index
from sequence_platform_tests.serving.conftest import RunningServer, wait_for
from sequence_platform_tests.test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
D1, D2 = date(2026, 3, 1), date(2026, 3, 2)
FORGOTTEN, BY_COMMAND, KEPT = 7, 8, 2
TOKEN = "s3cret-admin-token"
TINY = {
    "kind": "sequence",
    "name": "tiny",
    "version": 1,
    "signal": "engagement_enriched",
    "filter": "event_type IN ('save', 'click')",
    "fields": ["item_id", "event_type"],
    "max_length": 3,
    "lookback_days": 2,
}


def ev(user: int, number: int, when: str, event_type: str = "save") -> dict[str, Any]:
    """An event whose id says whose it is (``u7-...``), so any copy of it can be found."""
    return {
        "event_id": f"u{user}-{number}",
        "user_id": user,
        "item_id": 100 + number,
        "event_type": event_type,
        "event_time": when,
        "surface": "home_feed",
    }


def landing_events(day: date) -> list[dict[str, Any]]:
    d = day.isoformat()
    return [
        ev(FORGOTTEN, 10 * day.day + 1, f"{d}T08:00:00.000Z"),
        ev(FORGOTTEN, 10 * day.day + 2, f"{d}T13:00:00.000Z", "click"),
        ev(FORGOTTEN, 10 * day.day + 3, f"{d}T20:00:00.000Z"),
        ev(KEPT, 10 * day.day + 1, f"{d}T09:00:00.000Z"),
        ev(KEPT, 10 * day.day + 2, f"{d}T21:00:00.000Z", "click"),
        ev(BY_COMMAND, 10 * day.day + 1, f"{d}T10:00:00.000Z"),
    ]


# A record the batch refuses (no item_id) and a message the stream refuses (an item_id that is
# not a number): both name the forgotten user, so their dead letters are that user's rows.
BAD_LANDING = {"event_id": "u7-bad", "user_id": FORGOTTEN, "event_type": "save",
               "event_time": "2026-03-02T11:00:00.000Z"}  # fmt: skip
BAD_STREAM = {**ev(FORGOTTEN, 99, "2026-03-03T02:00:00.000Z"), "item_id": "not a number"}
STREAM = [
    ev(FORGOTTEN, 40, "2026-03-02T22:00:00.000Z"),  # late, for a day the batch holds
    ev(FORGOTTEN, 41, "2026-03-03T06:00:00.000Z"),
    BAD_STREAM,
    ev(KEPT, 40, "2026-03-03T07:00:00.000Z"),
    ev(BY_COMMAND, 40, "2026-03-03T05:00:00.000Z"),
]


def write_landing(home: Path) -> None:
    for day in (D1, D2):
        folder = home / "landing/engagement" / f"dt={day.isoformat()}"
        folder.mkdir(parents=True)
        records = landing_events(day) + ([BAD_LANDING] if day == D2 else [])
        (folder / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spine = home / "landing/labels" / f"dt={D2.isoformat()}"
    spine.mkdir(parents=True)
    ts = datetime(2026, 3, 2, 18, tzinfo=UTC)
    pl.DataFrame(
        {"user_id": [FORGOTTEN, KEPT, BY_COMMAND], "ts": [ts] * 3, "label": [1, 0, 1]},
        schema={"user_id": pl.Int64(), "ts": pl.Datetime("us", "UTC"), "label": pl.Int64()},
    ).write_parquet(spine / "part-00000.parquet")


# -- looking for a user everywhere -------------------------------------------------------------


def holds_user(frame: pl.DataFrame, user: int) -> bool:
    """Whether any row of ``frame`` is the user's: by ``user_id``, or by an event id or a raw
    record of theirs anywhere in its values (lists and JSON text included)."""
    if "user_id" in frame.columns and (frame["user_id"] == user).any():
        return True
    text = repr(frame.rows())
    return f"u{user}-" in text or f'"user_id": {user},' in text or f'"user_id":{user},' in text


def delta_tables(tables: Path) -> list[Path]:
    """Every Delta table but the tombstones (which keep the user id, on purpose)."""
    return sorted(
        log.parent for log in tables.rglob("_delta_log") if log.parent.name != "tombstones"
    )


def tables_holding(tables: Path, user: int) -> list[str]:
    return [
        str(path.relative_to(tables))
        for path in delta_tables(tables)
        if holds_user(pl.read_delta(str(path)), user)
    ]


def files_holding(home: Path, user: int) -> list[str]:
    """Data files (Delta logs aside) and snapshot files on disk holding a row of the user."""
    found = []
    for path in (home / "tables").rglob("*.parquet"):
        if {"_delta_log", "tombstones"}.isdisjoint(path.parts) and holds_user(
            pl.read_parquet(path, hive_partitioning=False), user
        ):
            found.append(str(path.relative_to(home)))
    for path in (home / "cache").rglob("*.arrow"):
        with pa.memory_map(str(path)) as source:
            frame = pl.DataFrame(pl.from_arrow(pa.ipc.open_file(source).read_all()))
        if holds_user(frame, user):
            found.append(str(path.relative_to(home)))
    return found


AS_OF = [
    "2026-03-01T12:00:00Z",  # before any snapshot: the batch's rows of the day
    "2026-03-02T00:00:00Z",  # an older snapshot's cutoff exactly
    "2026-03-02T21:00:00Z",  # before the newest snapshot: past reads of the day's rows
    "2026-03-03T00:00:00Z",  # the newest snapshot's cutoff
    "2026-03-03T12:00:00Z",  # the newest snapshot and the real-time tail
    None,  # now
]
SEQUENCES = ("recent_saves", "recent_engagement", "tiny")


def served(client: httpx.Client, user: int) -> dict[tuple[str, str | None], list[str]]:
    """The user's event ids from the API, per sequence and as-of."""
    result = {}
    for sequence in SEQUENCES:
        for as_of in AS_OF:
            params = {"fields": "item_id"} | ({"as_of": as_of} if as_of else {})
            response = client.get(f"/v1/sequences/{sequence}/{user}", params=params)
            assert response.status_code == 200, response.text
            result[sequence, as_of] = [e["event_id"] for e in response.json()["events"]]
    return result


def offline(catalog: Catalog, layout: TableLayout, user: int) -> dict[tuple[str, str], list[str]]:
    """The user's event ids from ``read_sequences``, per sequence and as-of."""
    result = {}
    for sequence in SEQUENCES:
        for as_of in [a for a in AS_OF if a]:
            at = datetime.fromisoformat(as_of)
            everyone = read_sequences(sequence, as_of=at, catalog=catalog, layout=layout)
            mine = everyone.filter(pl.col("user_id") == user)
            result[sequence, as_of] = mine["event_id"].explode().drop_nulls().to_list()
    return result


def memory_holding(app: FastAPI, user: int) -> list[str]:
    """What the read service holds in memory with a row of the user: the newest snapshots,
    the older ones it cached, the past reads' rows of days and the real-time tails."""
    store: SnapshotStore = app.state.serving.store
    found = []
    for name, table in store.snapshots.items():
        if holds_user(table.latest.frame, user):
            found.append(f"snapshot of {name}")
        for version_day, older in list(table.older._items.items()):
            if holds_user(older.frame, user):
                found.append(f"older snapshot {version_day} of {name}")
    for name_version_day, (rows, _) in list(store.past._days.items()):
        if holds_user(rows, user):
            found.append(f"past reads {name_version_day}")
    found += [f"tail {name}" for name, tail in store.tails.items() if holds_user(tail.rows, user)]
    return found


def wait_until_gone(
    client: httpx.Client, app: FastAPI, home: Path, user: int, timeout: float = 20
) -> None:
    """Until the service, which another process told nothing, neither serves nor holds the
    user, in memory or in its snapshot files: it follows the tombstones on its own."""
    deadline = time.monotonic() + timeout
    while any(served(client, user).values()) or memory_holding(app, user):
        assert time.monotonic() < deadline, (served(client, user), memory_holding(app, user))
        time.sleep(0.2)
    while files_holding(home, user):
        assert time.monotonic() < deadline, files_holding(home, user)
        time.sleep(0.2)


# -- the scenario ------------------------------------------------------------------------------


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    folder = tmp_path / "definitions"
    shutil.copytree(REPO / "definitions", folder, ignore=shutil.ignore_patterns("__*"))
    (folder / "tiny.json").write_text(json.dumps(TINY))
    return folder


def test_a_forgotten_user_is_gone_from_every_reader_and_stays_gone(
    tmp_path: Path, definitions: Path
) -> None:
    home = tmp_path / "home"
    write_landing(home)
    settings = PlatformSettings(
        home=home,
        start_date=D1,
        definitions=definitions,
        realtime_linger_seconds=0,
        admin_token=TOKEN,
    )
    catalog = load_catalog(definitions)
    defs = build_definitions(catalog=catalog, settings=settings)
    stream = LocalStream(home / "stream")
    topic = catalog.sources["engagement"].topic_name
    layout = TableLayout(settings.tables_root)
    tables = home / "tables"

    with dg.instance_for_test() as instance:
        runs = materialize_days(defs, instance, D1, D2)
        assert all(run.success and not run.failed_checks for run in runs), runs
        # A new version of a sequence: both versions' tables hold the user.
        (definitions / "tiny.json").write_text(json.dumps({**TINY, "version": 2}))
        catalog = load_catalog(definitions)
        defs = build_definitions(catalog=catalog, settings=settings)
        runs = materialize_days(defs, instance, D1, D2, keys=[dg.AssetKey(["sequences", "tiny"])])
        assert all(run.success for run in runs), runs
        produce_and_index(defs, stream, topic, STREAM, instance)

        holding = tables_holding(tables, FORGOTTEN)
        assert holding == [
            "dead_letters/engagement",
            "events/engagement",
            "realtime/engagement_enriched",
            "sequences/recent_engagement/v1",
            "sequences/recent_saves/v1",
            "sequences/tiny/v1",
            "sequences/tiny/v2",
            "signals/engagement_enriched",
            "stream_archive/engagement",
            "training/saves_training",
        ]
        assert tables_holding(tables, BY_COMMAND) == [t for t in holding if "dead" not in t]

        app = create_app(settings, catalog=catalog, refresh_interval=0.2)
        with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
            wait_for(client, "/readyz")
            before = served(client, FORGOTTEN)
            # Every instant asked about but now has some of the user's events (the reads are
            # not vacuous), and answering them filled the service's caches and snapshot files.
            assert all(ids for (_, as_of), ids in before.items() if as_of), before
            assert all(offline(catalog, layout, FORGOTTEN).values())
            kept_before = served(client, KEPT), offline(catalog, layout, KEPT)
            assert files_holding(home, FORGOTTEN)
            assert any(p.startswith("cache/") for p in files_holding(home, FORGOTTEN))
            cached = memory_holding(app, FORGOTTEN)
            assert any(c.startswith("past") for c in cached), cached
            served(client, BY_COMMAND)  # the other user's reads are cached too

            # The endpoint forgets the user, its memory included, before it answers.
            response = client.delete(
                f"/v1/admin/users/{FORGOTTEN}", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            deleted = {t["table"]: t["rows_deleted"] for t in body["tables"]}
            assert sorted(t for t, rows in deleted.items() if rows) == holding
            # Worked out from the data: 6 landing events and 2 valid stream events; the
            # signal drops no type here; one landing and one stream dead letter.
            assert deleted["events/engagement"] == 6
            assert deleted["stream_archive/engagement"] == 2
            assert deleted["realtime/engagement_enriched"] == 2
            assert deleted["signals/engagement_enriched"] == 6
            assert deleted["dead_letters/engagement"] == 2
            assert deleted["training/saves_training"] == 1
            assert deleted["sequences/recent_saves/v1"] == 2  # one row per day
            assert body["rows_deleted"] == sum(deleted.values())
            assert memory_holding(app, FORGOTTEN) == []
            assert files_holding(home, FORGOTTEN) == []
            assert all(not ids for ids in served(client, FORGOTTEN).values())

            # The command forgets another user; the running service follows the tombstones.
            assert memory_holding(app, BY_COMMAND)
            result = run_cli(
                "forget-user", str(BY_COMMAND), env={"SEQUENCE_PLATFORM_HOME": str(home)}
            )
            assert result.returncode == 0, result.stderr
            lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
            assert lines["events/engagement"][:3] == ["2", "rows", "deleted"]
            assert lines["stream_archive/engagement"][:3] == ["1", "rows", "deleted"]
            wait_until_gone(client, app, home, BY_COMMAND)

            # Nobody else lost anything.
            assert (served(client, KEPT), offline(catalog, layout, KEPT)) == kept_before

        for user in (FORGOTTEN, BY_COMMAND):
            assert not any(offline(catalog, layout, user).values())
            assert tables_holding(tables, user) == []
            assert files_holding(home, user) == []
        tombstones = pl.read_delta(str(tables / "tombstones"))
        assert sorted(tombstones["user_id"]) == [FORGOTTEN, BY_COMMAND]
        assert tombstones["purged_at"].null_count() == 0

        # The landing files still hold the user (they are the caller's to purge): rebuilding
        # every day from them, and a replay of the stream, do not bring the users back.
        runs = materialize_days(defs, instance, D1, D2)
        assert all(run.success for run in runs), runs
        replay = [*STREAM, ev(KEPT, 50, "2026-03-03T08:00:00.000Z")]
        produce_and_index(defs, stream, topic, replay, instance)

    for user in (FORGOTTEN, BY_COMMAND):
        assert tables_holding(tables, user) == []
        assert files_holding(home, user) == []
        assert not any(offline(catalog, layout, user).values())
    realtime = pl.read_delta(str(tables / "realtime/engagement_enriched"))
    assert "u2-50" in realtime["event_id"].to_list()  # the replay did go through
    events = pl.read_delta(str(tables / "events/engagement"))
    assert sorted(events["user_id"].unique()) == [KEPT]
    app = create_app(settings, catalog=catalog, refresh_interval=0.2)
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        wait_for(client, "/readyz")
        assert not any(served(client, FORGOTTEN).values())
        assert not any(served(client, BY_COMMAND).values())


def test_the_command_refuses_what_is_not_a_user_id(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, reason in (("abc", "a user id is an integer, not 'abc'"),
                        (str(2**63), f"user id {2**63} is outside the int64 range")):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            main(["forget-user", "1", bad])
        assert exited.value.code == 2
        assert reason in capsys.readouterr().err


def test_the_endpoint_needs_the_admin_token_and_is_off_without_one(
    tmp_path: Path, definitions: Path
) -> None:
    catalog = load_catalog(definitions)
    settings = PlatformSettings(home=tmp_path, definitions=definitions, admin_token=TOKEN)
    with (
        RunningServer(create_app(settings, catalog=catalog)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        wait_for(client, "/readyz")
        missing = client.delete("/v1/admin/users/1")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["detail"]
        other_scheme = client.delete("/v1/admin/users/1", headers={"Authorization": "Basic eDp5"})
        assert other_scheme.status_code == 401
        wrong = client.delete("/v1/admin/users/1", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        # Without the token even a bad user id says nothing but 401.
        assert client.delete("/v1/admin/users/abc").status_code == 401
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        for bad in ("abc", "1.5", str(2**63), str(-(2**63) - 1)):
            answer = client.delete(f"/v1/admin/users/{bad}", headers=authorized)
            assert answer.status_code == 422, (bad, answer.text)
            assert "user_id" in answer.json()["detail"]
        # No table yet: nothing to delete, a tombstone all the same.
        nothing = client.delete(f"/v1/admin/users/{-(2**63)}", headers=authorized)
        assert nothing.status_code == 200, nothing.text
        assert nothing.json()["rows_deleted"] == 0
        assert pl.read_delta(str(tmp_path / "tables/tombstones"))["user_id"].to_list() == [-(2**63)]

    off = PlatformSettings(home=tmp_path, definitions=definitions, admin_token=None)
    with (
        RunningServer(create_app(off, catalog=catalog)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        wait_for(client, "/readyz")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert client.delete("/v1/admin/users/1", headers=headers).status_code == 404
        assert "/v1/admin/users/{user_id}" not in client.get("/openapi.json").json()["paths"]


def test_forgetting_while_micro_batches_append_loses_nothing_else(
    tmp_path: Path, definitions: Path
) -> None:
    """The indexer keeps appending while users are forgotten one after the other: each one's
    rows are all gone afterwards (those appended during the deletion included), and every other
    event is in the real-time table and the stream archive exactly once."""
    home = tmp_path / "home"
    catalog = load_catalog(definitions)
    layout = TableLayout(str(home / "tables"))
    stream = LocalStream(home / "stream")
    topic = catalog.sources["engagement"].topic_name
    indexer = ContinuousIndexer(
        catalog, layout, stream, IndexerSettings(idle_sleep_seconds=0.001, retry_seconds=0.05)
    )
    forgotten = (FORGOTTEN, 17, 27, 37)
    kept: list[str] = []
    start = datetime(2026, 3, 4, tzinfo=UTC)

    def produce(batch: int) -> None:
        records = []
        for n in range(3):
            when = (start + timedelta(minutes=10 * batch + n)).isoformat()
            records += [ev(user, 100 * batch + n, when) for user in (*forgotten, KEPT)]
        kept.extend(f"u{KEPT}-{100 * batch + n}" for n in range(3))
        stream.produce(
            topic, [(str(r["user_id"]).encode(), json.dumps(r).encode()) for r in records]
        )

    produce(0)
    indexer.poll_once()  # the tables exist, the users are in them
    thread = threading.Thread(target=indexer.run, daemon=True)
    thread.start()
    producing = threading.Event()

    def keep_producing() -> None:
        batch = 1
        while not producing.is_set():
            produce(batch)
            batch += 1
            time.sleep(0.002)

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    try:
        time.sleep(0.2)
        outcomes = [forget_users(layout, [user]) for user in forgotten]
        time.sleep(0.2)
    finally:
        producing.set()
        producer.join(10)
    deadline = time.monotonic() + 30
    while indexer.stream.end_offsets(topic)[0] > min(indexer_offsets(indexer, catalog).values()):
        assert time.monotonic() < deadline, "the indexer did not catch up"
        time.sleep(0.05)
    indexer.stop()
    thread.join(10)

    assert all(outcome.rows_deleted > 0 for outcome in outcomes)
    for user in forgotten:
        assert tables_holding(home / "tables", user) == []
        assert files_holding(home, user) == []
    realtime = pl.read_delta(str(home / "tables/realtime/engagement_enriched"))
    assert sorted(realtime["event_id"].to_list()) == sorted(kept)
    archive = pl.read_delta(str(home / "tables/stream_archive/engagement"))
    assert sorted(archive["event_id"].to_list()) == sorted(kept)


def indexer_offsets(indexer: ContinuousIndexer, catalog: Catalog) -> dict[str, int]:
    writer = RealtimeWriter(catalog, indexer.layout, indexer.stream)
    return writer.committed_offsets("engagement", 0)


def test_rows_committed_between_reading_keys_and_deleting_them_go_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's rows committed after the deletion read its keys (by a writer the fence did not
    stop): the deletion, made on the newer version, does not know their keys, so the table is
    read again and they go in another round."""
    import deltalake

    from sequence_platform.runtime import forget

    uri = str(tmp_path / "events/engagement")
    frame = pl.DataFrame({"dt": [D1, D1], "user_id": [FORGOTTEN, KEPT]})
    deltalake.write_deltalake(uri, frame.to_arrow(), partition_by=["dt"])
    real_keys = forget._keys_of
    late = pl.DataFrame({"dt": [D1], "user_id": [BY_COMMAND]})
    reads: list[list[object]] = []

    def keys_then_a_late_commit(table: deltalake.DeltaTable, users: pl.Series) -> Any:
        keys = real_keys(table, users)
        if not reads:
            deltalake.write_deltalake(uri, late.to_arrow(), mode="append", partition_by=["dt"])
        reads.append([] if keys is None else keys.to_series().to_list())
        return keys

    monkeypatch.setattr(forget, "_keys_of", keys_then_a_late_commit)
    users = pl.Series([FORGOTTEN, BY_COMMAND], dtype=pl.Int64)
    purged = forget.purge_table("events/engagement", uri, users)
    assert reads == [[FORGOTTEN], [BY_COMMAND], [BY_COMMAND]]
    assert purged.rows_deleted == 2
    assert pl.read_delta(uri)["user_id"].to_list() == [KEPT]
