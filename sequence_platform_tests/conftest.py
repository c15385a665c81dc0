"""Shared fixtures: a real Kafka broker (session), small generated data homes."""

pytest_plugins = ["sequence_platform_tests.kafka_fixtures"]
