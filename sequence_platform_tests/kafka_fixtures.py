"""Pytest fixtures for a real Kafka broker.

Load from a conftest with ``pytest_plugins = ["sequence_platform_tests.kafka_fixtures"]``
(or ``pytest -p sequence_platform_tests.kafka_fixtures``).

With ``CI=true`` a broker that cannot start fails the tests; elsewhere they are skipped
with a hint on installing Java and Maven.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sequence_platform.ingest.kafka_broker import INSTALL_HINT, KafkaBroker, KafkaUnavailable
from sequence_platform_tests.ci import unavailable


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A running single-node Kafka broker shared by the whole session.

    Use ``kafka_broker.bootstrap`` as ``bootstrap_servers``. A test that calls
    ``pause()`` must ``resume()`` in a ``finally`` block: the broker is shared.
    """
    broker = KafkaBroker()
    try:
        try:
            broker.start()
        except KafkaUnavailable as first:
            # One more try on a clean slate: a busy machine can make a first start stumble.
            print(f"Kafka broker did not start, trying again: {first}")
            broker.stop()
            broker = KafkaBroker()
            broker.start()
    except KafkaUnavailable as exc:
        hint = "" if INSTALL_HINT in str(exc) else f"\nTo run Kafka tests: {INSTALL_HINT}"
        unavailable(f"Kafka broker unavailable: {exc}{hint}")
    try:
        yield broker
    finally:
        broker.stop()
