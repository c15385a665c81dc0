"""Round-trip tests against a real Kafka broker (see ``kafka_broker.py``)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from sequence_platform.ingest.kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka


def _produce(bootstrap: str, topic: str, messages: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Send keyed JSON messages to partition 0; return the offsets the broker assigned."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        futures = [
            producer.send(topic, key=key.encode("utf-8"), value=json.dumps(value).encode("utf-8"))
            for key, value in messages
        ]
        producer.flush(timeout=30)
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close(timeout=10)
    assert {m.partition for m in metadata} == {0}
    return [m.offset for m in metadata]


def _read(
    bootstrap: str, topic: str, start_offset: int, expected: int, timeout: float = 30.0
) -> list[tuple[int, str, dict[str, Any]]]:
    """Read ``expected`` records of partition 0 from ``start_offset``: assign + seek, no group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    records: list[tuple[int, str, dict[str, Any]]] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, start_offset)
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.offset, r.key.decode(), json.loads(r.value)) for r in batch)
    finally:
        consumer.close()
    return records


def test_produce_and_consume_json_with_keys(kafka_broker: KafkaBroker) -> None:
    topic = f"kafka-broker-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
        assert topic in admin.list_topics()
    finally:
        admin.close()

    messages = [
        (f"user-{i % 3}", {"user_id": f"user-{i % 3}", "event": "click", "seq": i})
        for i in range(5)
    ]
    assert _produce(kafka_broker.bootstrap, topic, messages) == [0, 1, 2, 3, 4]

    expected = [(offset, key, value) for offset, (key, value) in enumerate(messages)]
    assert _read(kafka_broker.bootstrap, topic, 0, len(messages)) == expected
    # Seeking into the middle returns exactly the tail.
    assert _read(kafka_broker.bootstrap, topic, 3, 2) == expected[3:]


def test_pause_resume_keeps_port_and_data(kafka_broker: KafkaBroker) -> None:
    topic = f"kafka-broker-pause-{uuid.uuid4().hex[:8]}"  # auto-created on first send
    before = [(f"user-{i}", {"user_id": f"user-{i}", "seq": i}) for i in range(3)]
    assert _produce(kafka_broker.bootstrap, topic, before) == [0, 1, 2]
    bootstrap = kafka_broker.bootstrap

    kafka_broker.pause()
    try:
        assert not kafka_broker.running
        started = time.monotonic()
        with pytest.raises(KafkaError):
            KafkaConsumer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=2000).topics()
        assert time.monotonic() - started < 10
    finally:
        kafka_broker.resume()

    assert kafka_broker.running
    assert kafka_broker.bootstrap == bootstrap
    expected = [(offset, key, value) for offset, (key, value) in enumerate(before)]
    assert _read(bootstrap, topic, 0, len(before)) == expected
    # The log continues where it stopped.
    assert _produce(bootstrap, topic, [("user-9", {"user_id": "user-9", "seq": 3})]) == [3]
