"""Train/serve skew: what the real-time path produced against what the batch produced.

Two comparisons, both pure (the tables are read in ``runtime.skew``):

- **signal rows** of a day: the real-time rows against the batch rows, matched by
  ``event_id`` and compared field by field (lists exactly), plus the events one side has and
  the other lacks;
- **sequences** at a day's cutoff: what serving answered from the previous snapshot and the
  real-time tail (``engine.serve.merge_realtime_tail``) against the new snapshot, by length,
  by the edit distance of the event id lists, and field by field on the events both hold.

Each result says whether it passed (no skew at all), gives rates, and a few examples with the
values that differ, as plain JSON-ready data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl

from sequence_platform.engine.sequence import (
    assemble_snapshot,
    explode_snapshot,
    merge_rows,
)
from sequence_platform.engine.serve import merge_realtime_tail
from sequence_platform.engine.signal import deduplicate_events
from sequence_platform.spec.models import SequenceSpec

EXAMPLES = 5
"""Examples kept per kind of difference."""
SAMPLE_USERS = 200
_GOLDEN = 0x9E3779B1
"""Knuth's multiplicative hash constant: a sample by it is the same on every machine and run."""
JsonValue = Any


def rate(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


@dataclass(frozen=True)
class SignalSkew:
    """Real-time signal rows of a day against the batch's, by ``event_id``."""

    compared: int
    """Events in both, compared field by field."""
    mismatches: dict[str, int]
    """Per field, compared events whose values differ."""
    streamed: int
    """Batch events that came through the stream: the ones real time should hold."""
    missing: int
    """Of those, the ones real time does not hold."""
    realtime: int
    """Events in the real-time rows (first delivered copy of each)."""
    extra: int
    """Of those, the ones the batch does not hold."""
    examples: dict[str, list[dict[str, JsonValue]]] = field(default_factory=dict)
    pruned: int = 0
    """Streamed events left out of ``missing``: their real-time rows may have been pruned
    before the comparison (the batch already held them)."""

    @property
    def passed(self) -> bool:
        return self.missing == 0 and self.extra == 0 and not any(self.mismatches.values())

    @property
    def mismatch_rates(self) -> dict[str, float]:
        return {name: rate(count, self.compared) for name, count in self.mismatches.items()}

    @property
    def missing_rate(self) -> float:
        return rate(self.missing, self.streamed - self.pruned)

    @property
    def extra_rate(self) -> float:
        return rate(self.extra, self.realtime)

    def metadata(self) -> dict[str, JsonValue]:
        """Figures and examples, ready for an asset check's metadata."""
        return {
            "compared_events": self.compared,
            "mismatch_rate": self.mismatch_rates,
            "mismatched_events": self.mismatches,
            "streamed_batch_events": self.streamed,
            "missing_in_realtime": self.missing,
            "missing_rate": self.missing_rate,
            "realtime_events": self.realtime,
            "extra_in_realtime": self.extra,
            "extra_rate": self.extra_rate,
            "pruned_before_check": self.pruned,
            "examples": self.examples,
        }


def compare_signal_rows(
    batch: pl.DataFrame,
    realtime: pl.DataFrame,
    fields: Sequence[str],
    *,
    streamed: pl.Series,
    pruned: pl.Series | None = None,
    examples: int = EXAMPLES,
) -> SignalSkew:
    """Compare one day's signal rows of the two paths.

    ``batch`` and ``realtime`` hold ``event_id`` and ``fields``; ``realtime`` is in delivery
    order (the first copy of an event counts, as serving takes it). ``streamed``: the event
    ids the real-time path received that day — a batch event it never saw (a landing-only
    one) cannot be missing from it. ``pruned``: event ids whose real-time rows may have been
    deleted before the comparison; they are not counted as missing.
    """
    fields = [name for name in fields if name != "event_id"]
    rows = deduplicate_events(realtime.lazy()).collect()
    held = batch.select("event_id", *fields)
    both = held.join(rows.select("event_id", *fields), on="event_id", suffix=_RT)
    differs = [(~pl.col(f).eq_missing(pl.col(f + _RT))).alias(f) for f in fields]
    flags = both.select("event_id", *differs)
    mismatches = {f: int(flags[f].sum()) for f in fields}
    found: dict[str, list[dict[str, JsonValue]]] = {}
    for name in fields:
        differing = both.filter(flags[name]).sort("event_id").head(examples)
        if differing.height:
            found[f"mismatch:{name}"] = [
                {
                    "event_id": r["event_id"],
                    "batch": _json(r[name]),
                    "realtime": _json(r[name + _RT]),
                }
                for r in differing.iter_rows(named=True)
            ]
    excused = pruned if pruned is not None else pl.Series("event_id", [], dtype=pl.String)
    expected = held.filter(pl.col("event_id").is_in(streamed.implode()))
    lost = expected.filter(
        ~pl.col("event_id").is_in(rows["event_id"].implode())
        & ~pl.col("event_id").is_in(excused.implode())
    )
    excused_count = expected.filter(
        pl.col("event_id").is_in(excused.implode())
        & ~pl.col("event_id").is_in(rows["event_id"].implode())
    ).height
    surplus = rows.filter(~pl.col("event_id").is_in(held["event_id"].implode()))
    if lost.height:
        found["missing"] = _records(lost.sort("event_id").head(examples))
    if surplus.height:
        found["extra"] = _records(
            surplus.select("event_id", *fields).sort("event_id").head(examples)
        )
    return SignalSkew(
        compared=both.height,
        mismatches=mismatches,
        streamed=expected.height,
        missing=lost.height,
        realtime=rows.height,
        extra=surplus.height,
        examples=found,
        pruned=excused_count,
    )


_RT = "__realtime"


@dataclass(frozen=True)
class ServedSkew:
    """Served sequences against the new snapshot, for a sample of users."""

    users: int
    """Users compared (the sample)."""
    candidates: int
    """Users the sample was drawn from: those with events of the day on either path."""
    users_differing: int
    """Users whose event id lists differ."""
    length_difference_mean: float
    """Mean of |served length - snapshot length| over the sample."""
    length_difference_max: int
    edit_distance_mean: float
    """Mean edit distance between the event id lists (insertions, deletions, substitutions)."""
    edit_distance_max: int
    common_events: int
    """Events in both lists, compared field by field."""
    mismatches: dict[str, int]
    """Per field, common events whose served value differs from the snapshot's."""
    users_with_field_mismatch: int
    examples: list[dict[str, JsonValue]] = field(default_factory=list)
    not_streamed: int = 0
    """Events of the day the real-time path never received (landing-only), left out of the
    snapshot side: serving could not have had them."""

    @property
    def passed(self) -> bool:
        return self.users_differing == 0 and self.users_with_field_mismatch == 0

    @property
    def share_differing(self) -> float:
        return rate(self.users_differing, self.users)

    @property
    def mismatch_rates(self) -> dict[str, float]:
        return {name: rate(count, self.common_events) for name, count in self.mismatches.items()}

    def metadata(self) -> dict[str, JsonValue]:
        return {
            "users_compared": self.users,
            "candidate_users": self.candidates,
            "users_differing": self.users_differing,
            "share_differing": self.share_differing,
            "length_difference_mean": self.length_difference_mean,
            "length_difference_max": self.length_difference_max,
            "edit_distance_mean": self.edit_distance_mean,
            "edit_distance_max": self.edit_distance_max,
            "common_events": self.common_events,
            "field_mismatch_rate": self.mismatch_rates,
            "users_with_field_mismatch": self.users_with_field_mismatch,
            "events_not_streamed": self.not_streamed,
            "examples": self.examples,
        }


def sample_users(users: pl.Series, size: int = SAMPLE_USERS) -> pl.Series:
    """Up to ``size`` of the distinct ``users``, chosen by a fixed hash: the same users on
    every run, spread over the id range, ascending."""
    distinct = users.drop_nulls().unique()
    hashed = ((distinct.cast(pl.Int64).reinterpret(signed=False) * _GOLDEN) & 0xFFFFFFFF).alias(
        "__hash"
    )
    chosen = pl.DataFrame({"user_id": distinct, "__hash": hashed}).sort("__hash", "user_id")
    return chosen.head(size)["user_id"].sort()


def served_sequences(
    previous: pl.DataFrame, tail: pl.DataFrame, spec: SequenceSpec, at: datetime
) -> pl.DataFrame:
    """What serving answers at ``at`` from the ``previous`` snapshot and the real-time
    ``tail`` (signal rows in delivery order), in the snapshot layout."""
    rows = merge_realtime_tail(previous.lazy(), tail.lazy(), spec, at)
    return assemble_snapshot(rows.drop("from_realtime"), spec, at).collect()


def expected_snapshot(
    new: pl.DataFrame,
    previous: pl.DataFrame,
    not_streamed: pl.Series,
    spec: SequenceSpec,
    at: datetime,
) -> pl.DataFrame:
    """The ``new`` snapshot (at ``at``) without the events serving could not have had.

    Those are left out and the lists re-assembled with the ``previous`` snapshot's events
    (cutoff one day earlier), which may move up in their place; with nothing to leave out
    this is ``new`` itself. ``new``'s copy of an event wins."""
    kept = explode_snapshot(new.lazy(), spec).filter(
        ~pl.col("event_id").is_in(not_streamed.implode())
    )
    older = explode_snapshot(previous.lazy(), spec)
    return assemble_snapshot(merge_rows(kept, older), spec, at).collect()


def compare_sequences(
    served: pl.DataFrame,
    snapshot: pl.DataFrame,
    users: pl.Series,
    fields: Sequence[str],
    *,
    candidates: int | None = None,
    not_streamed: int = 0,
    examples: int = EXAMPLES,
) -> ServedSkew:
    """Compare ``served`` and ``snapshot`` (snapshot layout) for each of ``users``; a user
    absent from one side has an empty sequence there."""
    fields = [name for name in fields if name not in ("event_id", "event_time")]
    left = _lists(served, users, ["event_id", *fields])
    right = _lists(snapshot, users, ["event_id", *fields])
    distances: list[int] = []
    lengths: list[int] = []
    mismatches = dict.fromkeys(fields, 0)
    common = 0
    field_users = 0
    found: list[dict[str, JsonValue]] = []
    # A loop over the sample's users, by design: edit distance has no columnar form, and
    # the sample is small (a few hundred users of at most max_length events).
    for user in users.to_list():
        ours, theirs = left[user], right[user]
        distance = edit_distance(ours["event_id"], theirs["event_id"])
        distances.append(distance)
        lengths.append(abs(len(ours["event_id"]) - len(theirs["event_id"])))
        position = {event_id: index for index, event_id in enumerate(theirs["event_id"])}
        differing: dict[str, list[dict[str, JsonValue]]] = {}
        for index, event_id in enumerate(ours["event_id"]):
            other = position.get(event_id)
            if other is None:
                continue
            common += 1
            for name in fields:
                if not _same(ours[name][index], theirs[name][other]):
                    mismatches[name] += 1
                    differing.setdefault(name, []).append(
                        {
                            "event_id": event_id,
                            "served": _json(ours[name][index]),
                            "snapshot": _json(theirs[name][other]),
                        }
                    )
        field_users += bool(differing)
        if (distance or differing) and len(found) < examples:
            found.append(
                {
                    "user_id": user,
                    "edit_distance": distance,
                    "served": ours["event_id"][:_SHOWN],
                    "snapshot": theirs["event_id"][:_SHOWN],
                    "field_differences": {k: v[:_SHOWN] for k, v in differing.items()},
                }
            )
    size = len(distances)
    return ServedSkew(
        users=size,
        candidates=size if candidates is None else candidates,
        users_differing=sum(1 for d in distances if d),
        length_difference_mean=round(sum(lengths) / size, 6) if size else 0.0,
        length_difference_max=max(lengths, default=0),
        edit_distance_mean=round(sum(distances) / size, 6) if size else 0.0,
        edit_distance_max=max(distances, default=0),
        common_events=common,
        mismatches=mismatches,
        users_with_field_mismatch=field_users,
        examples=found,
        not_streamed=not_streamed,
    )


_SHOWN = 10
"""Events shown per list in an example."""


def edit_distance(left: Sequence[object], right: Sequence[object]) -> int:
    """Levenshtein distance between two sequences: the fewest insertions, deletions and
    substitutions that turn one into the other."""
    # Equal heads and tails cost nothing; clean data is all head, so this is linear there.
    start = 0
    while start < len(left) and start < len(right) and left[start] == right[start]:
        start += 1
    end_left, end_right = len(left), len(right)
    while end_left > start and end_right > start and left[end_left - 1] == right[end_right - 1]:
        end_left -= 1
        end_right -= 1
    a, b = left[start:end_left], right[start:end_right]
    if not a or not b:
        return max(len(a), len(b))
    previous = list(range(len(b) + 1))
    for i, item in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item != other))
            )
        previous = current
    return previous[-1]


def _lists(
    frame: pl.DataFrame, users: pl.Series, columns: list[str]
) -> dict[int, dict[str, list[Any]]]:
    picked = frame.filter(pl.col("user_id").is_in(users.implode())).select("user_id", *columns)
    found = {row["user_id"]: row for row in picked.iter_rows(named=True)}
    empty: dict[str, list[Any]] = {name: [] for name in columns}
    return {user: found.get(user, empty) for user in users.to_list()}


def _same(left: object, right: object) -> bool:
    """Values equal exactly, floats and lists of floats included (NaN equals NaN, as the
    signal comparison's ``eq_missing`` has it)."""
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (left != left and right != right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            _same(a, b) for a, b in zip(left, right, strict=True)
        )
    return left == right


def _json(value: object) -> JsonValue:
    """A value as JSON can hold it: instants and days as ISO text, lists element-wise."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return [_json(item) for item in value]
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def _records(frame: pl.DataFrame) -> list[dict[str, JsonValue]]:
    return [{k: _json(v) for k, v in row.items()} for row in frame.iter_rows(named=True)]
