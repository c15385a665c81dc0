"""The serving runtime: a FastAPI read service over the sequence tables, refreshed in memory.

``create_app(settings)`` builds the app; ``serve(settings, host, port)`` runs it with uvicorn.
"""

from sequence_platform.serving.app import create_app, serve
from sequence_platform.serving.store import SnapshotStore

__all__ = ["SnapshotStore", "create_app", "serve"]
