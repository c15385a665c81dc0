"""Executors the example definitions use. Add your own here: a function LazyFrame -> LazyFrame."""

import polars as pl

from sequence_platform.spec import executor


@executor("dwell_bucket")
def dwell_bucket(frame: pl.LazyFrame, *, edges: list[int]) -> pl.LazyFrame:
    """``dwell_bucket``: the index of the first edge above ``dwell_ms`` (0 below the first).

    With edges [1000, 5000]: under 1 s → 0, 1 to 5 s → 1, 5 s and more → 2; no dwell → null.
    """
    if sorted(edges) != list(edges) or not edges:
        raise ValueError("edges must be a non-empty ascending list")
    bucket = pl.lit(0, dtype=pl.Int32)
    for edge in edges:
        bucket = bucket + (pl.col("dwell_ms") >= edge).cast(pl.Int32)
    return frame.with_columns(
        pl.when(pl.col("dwell_ms").is_null()).then(None).otherwise(bucket).alias("dwell_bucket")
    )
