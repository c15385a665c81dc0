"""The floor of the read service: the same stack, answering precomputed bytes.

FastAPI and uvicorn with the options ``sequence-platform serve`` uses, one worker, and routes
of the same shape as the real ones (path and query parameters parsed the same way, the POST
body parsed as JSON, synchronous handlers on the thread pool) that answer the bytes a real
response had. Whatever the real service spends beyond this floor is its own work.

    python benchmarks/floor_app.py --port 8001 --bodies bodies.json

``bodies.json`` maps ``GET <user_id> <format>`` and ``POST batch`` to
``{"body": <base64>, "media_type": ...}``.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Body, FastAPI, HTTPException, Response


def body_key(method: str, what: str) -> str:
    return f"{method} {what}"


def create_floor_app(bodies: dict[str, tuple[bytes, str]]) -> FastAPI:
    app = FastAPI(title="floor")

    def answer(key: str) -> Response:
        if key not in bodies:
            raise HTTPException(404, f"no precomputed body for {key}")
        content, media_type = bodies[key]
        return Response(content=content, media_type=media_type)

    @app.get("/v1/sequences/{sequence}/{user_id}")
    def get_sequence(
        sequence: str,
        user_id: int,
        max_length: int | None = None,
        max_age_seconds: float | None = None,
        fields: str | None = None,
        as_of: str | None = None,
        format: str = "records",
    ) -> Response:
        return answer(body_key("GET", f"{user_id} {format}"))

    @app.post("/v1/sequences/{sequence}/batch")
    def batch_sequences(sequence: str, body: Annotated[dict[str, Any], Body()]) -> Response:
        return answer(body_key("POST", "batch"))

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def read_bodies(path: Path) -> dict[str, tuple[bytes, str]]:
    stored = json.loads(path.read_text())
    return {
        key: (base64.b64decode(value["body"]), value["media_type"]) for key, value in stored.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    args = parser.parse_args()
    app = create_floor_app(read_bodies(args.bodies))
    # The options of sequence_platform.serving.app.serve.
    # Like `sequence-platform serve`, which writes no access log unless asked (--access-log).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
