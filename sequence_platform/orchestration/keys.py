"""Every asset key the platform defines, in one place: ``<family>/<name>``."""

from __future__ import annotations

import dagster as dg

DAILY_GROUPS = ("events", "features", "signals", "sequences", "training")
"""The families a day's batch computes (landing is external; the real-time tables and dead
letters are written by others). The batch job, the schedule and ``materialize`` select these."""


def daily_batch() -> dg.AssetSelection:
    return dg.AssetSelection.groups(*DAILY_GROUPS)


def landing_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["landing", name])


def events_key(source: str) -> dg.AssetKey:
    return dg.AssetKey(["events", source])


def features_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["features", table])


def signal_key(signal: str) -> dg.AssetKey:
    return dg.AssetKey(["signals", signal])


def sequence_key(sequence: str) -> dg.AssetKey:
    return dg.AssetKey(["sequences", sequence])


def training_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["training", name])


def realtime_key(signal: str) -> dg.AssetKey:
    return dg.AssetKey(["realtime", signal])


def stream_key(source: str) -> dg.AssetKey:
    return dg.AssetKey(["stream", source])


def stream_archive_key(source: str) -> dg.AssetKey:
    return dg.AssetKey(["stream_archive", source])


def dead_letters_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["dead_letters", name])


def key_of(asset: str) -> dg.AssetKey:
    """The key of an asset named ``family/name`` (as ``runtime.late`` names them)."""
    return dg.AssetKey(asset.split("/"))
