"""The runtimes' own work, with no Dagster in it: daily batch steps, real-time micro-batches,
the continuous indexer and the live producer. Each composes ingest, engine and storage;
``orchestration`` runs them under Dagster, the CLI runs them directly.
"""
