"""A fingerprint of everything a model answers for the seed messages: speed work must not move it.

Runs every seed message (train and dev) on every channel and without one through
``pipeline(batch, replies=True)`` in batches of ``--batch-size``, and the first ``--api-requests``
of them through ``POST /v1/triage`` and ``POST /v1/replies/suggest`` of the app in process
(``TestClient``, lifespan included). Prints the SHA-256 of the serialised results and of the
response bodies: run it before and after a change, on the same model, and compare. Timings are
not measured here (see api_latency.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from api_latency import seed_bodies
from common import write_result
from fastapi.testclient import TestClient
from tqdm import tqdm

from triage.api.app import create_app
from triage.config import Settings
from triage.schemas import Message
from triage.service import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--api-requests", type=int, default=1500)
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="bench-digest-")  # the app's ticket store
    settings = Settings(
        model_dir=args.model_dir,
        train_if_missing=False,
        database_url=f"sqlite:///{scratch.name}/tickets.db",
    )
    pipeline = load_pipeline(settings)
    channels = [None, *pipeline.taxonomy.channels]
    bodies = [{**body, "channel": channel} for body in seed_bodies() for channel in channels]
    messages = [Message(**body) for body in bodies]
    results = hashlib.sha256()
    for start in tqdm(range(0, len(messages), args.batch_size), desc="pipeline", unit="batch"):
        for result in pipeline(messages[start : start + args.batch_size], replies=True):
            results.update(result.model_dump_json().encode() + b"\n")

    responses = hashlib.sha256()
    with TestClient(create_app(settings)) as client:
        for body in tqdm(bodies[: args.api_requests], desc="API", unit="request"):
            for path in ("/v1/triage", "/v1/replies/suggest"):
                response = client.post(path, json=body)
                responses.update(f"{response.status_code} ".encode() + response.content + b"\n")

    digests = {
        "results": len(messages),
        "results_sha256": results.hexdigest(),
        "api_responses": 2 * min(len(bodies), args.api_requests),
        "api_responses_sha256": responses.hexdigest(),
    }
    scratch.cleanup()
    print(json.dumps(digests, indent=2))
    print(f"wrote {write_result('output_digest', {'model_dir': str(args.model_dir), **digests})}")


if __name__ == "__main__":
    main()
