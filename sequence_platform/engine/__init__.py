"""The shared execution engine: pure Polars, no I/O, no orchestration.

Batch assets, real-time micro-batches and the read service all call these functions, so the
three runtimes cannot disagree about what a sequence is.
"""

from sequence_platform.engine.decode import (
    DEAD_LETTER_SCHEMA,
    DecodedEvents,
    decode_json_records,
    validate_events,
)
from sequence_platform.engine.sequence import (
    assemble_snapshot,
    combine_days,
    day_rows,
    empty_snapshot,
    explode_snapshot,
    merge_rows,
    sequence_rows,
)
from sequence_platform.engine.serve import add_request_fields, merge_realtime_tail
from sequence_platform.engine.signal import build_signal, deduplicate_events, enrich_as_of

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "DecodedEvents",
    "add_request_fields",
    "assemble_snapshot",
    "build_signal",
    "combine_days",
    "day_rows",
    "decode_json_records",
    "deduplicate_events",
    "empty_snapshot",
    "enrich_as_of",
    "explode_snapshot",
    "merge_realtime_tail",
    "merge_rows",
    "sequence_rows",
    "validate_events",
]
