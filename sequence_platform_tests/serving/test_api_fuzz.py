"""No input produces a 500: random strings and numbers in every parameter and body field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sequence_platform_tests.serving.conftest import Served

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=24)
big_int = st.integers(min_value=-(2**70), max_value=2**70)
number = st.one_of(big_int, st.floats(allow_nan=True, allow_infinity=True))
zones = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
moment = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones
).map(datetime.isoformat)
field_names = st.sampled_from(
    ["event_id", "item_id", "current_category", "age_seconds", "embedding", "x", ""]
)
fields = st.lists(field_names, max_size=4).map(",".join)


def anything(*good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), text, number.map(str), *good)


@FUZZ
@given(
    sequence=st.one_of(st.sampled_from(["recent_saves", "recent_engagement"]), text),
    user=st.one_of(big_int.map(str), text),
    max_length=anything(st.integers(-5, 120).map(str)),
    max_age=anything(st.floats(-10.0, 1e12).map(str)),
    fields=anything(fields),
    as_of=anything(moment),
    format=anything(st.sampled_from(["records", "columnar"])),
)
def test_get_never_fails_with_500(
    served: Served,
    sequence: str,
    user: str,
    max_length: str | None,
    max_age: str | None,
    fields: str | None,
    as_of: str | None,
    format: str | None,
) -> None:
    params = {
        "max_length": max_length,
        "max_age_seconds": max_age,
        "fields": fields,
        "as_of": as_of,
        "format": format,
    }
    path = f"/v1/sequences/{quote(sequence, safe='')}/{quote(user, safe='')}"
    response = served.client.get(path, params={k: v for k, v in params.items() if v is not None})
    assert response.status_code < 500, (path, params, response.text)


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), number, text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(
    body=st.dictionaries(
        st.sampled_from(
            ["user_ids", "max_length", "max_age_seconds", "fields", "as_of", "format", "x"]
        ),
        st.one_of(json_value, st.lists(big_int, max_size=5), fields, moment),
    )
)
def test_batch_never_fails_with_500(served: Served, body: dict[str, Any]) -> None:
    # Encoded here: NaN and Infinity are not JSON, but a client may still send them.
    response = served.client.post(
        "/v1/sequences/recent_saves/batch",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert response.status_code < 500, (body, response.text)
