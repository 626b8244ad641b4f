"""A pushbridge callback receiver in Python (Starlette): verifies the Standard Webhooks
signature with the `standardwebhooks` package, deduplicates on `webhook-id` (a delivery
may arrive twice, never a different event), and answers 2xx once the event is handled.

    pip install starlette uvicorn standardwebhooks
    WEBHOOK_SECRET=whsec_... uvicorn receiver:app --port 9000

Each verified event is printed as one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def handle(event: dict[str, Any]) -> None:
    """Your code: event["type"] is job.completed or job.failed, event["data"] the job."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def create_app(secret: str) -> Starlette:
    webhook = Webhook(secret)
    seen: set[str] = set()  # use your database in production

    async def receive(request: Request) -> Response:
        body = await request.body()  # verify the exact bytes received
        try:
            event = webhook.verify(body, dict(request.headers))  # signature and timestamp
        except WebhookVerificationError:
            return Response("invalid signature", status_code=400)
        webhook_id = request.headers["webhook-id"]
        if webhook_id not in seen:
            seen.add(webhook_id)
            handle(event)
        return Response(status_code=204)

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])


app = create_app(os.environ["WEBHOOK_SECRET"])
