"""The route providers push to (CONTRACT §5b): POST /v1/push/{upstream}/{job id}/{mac}.

Checked before anything touches the store: the upstream exists and pushes are on for
it, the job id is well formed, and the mac is the one pushbridge made for this upstream
and job (engine/push.py; compared in constant time). Anything wrong there: 404, and
nothing else happens. When the upstream has a push secret, the body is read (capped at
`listen.max_body_bytes`, within the memory budget of bodies in flight) and the
provider's signature checked: 401 if it is not valid.

A push then only makes the job due now (JobEvents.pushed). Its body is never used
otherwise: the job's result is what the provider answers to pushbridge's own poll. The
answer is 200 (an empty body) whatever the job's state, so that a provider does not retry
a push for a job that is done or gone: 200, not 204, since RunPod takes only a 200 as
received (it sends the push twice more, 10 s apart, after any other answer).
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.api.problems import Problem
from bridge.api.requestbody import read_body, reservation
from bridge.engine.events import JobEvents
from bridge.engine.runtime import Runtime
from bridge.store import valid_job_id
from bridge.upstreams.base import VerifiesPush


def _known_url(rt: Runtime, name: str, job_id: str, mac: str) -> bool:
    return (
        rt.push_links is not None
        and rt.push_enabled(name)
        and valid_job_id(job_id)
        and rt.push_links.verify(name, job_id, mac)
    )


async def _signed(request: Request, rt: Runtime, name: str, secret: str) -> bool:
    upstream = rt.upstreams[name]
    listen = rt.config.listen
    async with reservation(request.app.state.body_budget) as reserved:
        body = await read_body(request, listen.max_body_bytes, listen.body_timeout_s, reserved)
        return isinstance(upstream, VerifiesPush) and upstream.verify_push(
            request.headers, bytes(body), secret
        )


async def receive_push(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    name = request.path_params["upstream"]
    job_id, mac = request.path_params["job_id"], request.path_params["mac"]
    label = name if name in rt.upstreams else "-"  # never a label the caller chose
    if not _known_url(rt, name, job_id, mac):
        rt.metrics.pushes_refused.labels(label, "url").inc()
        raise Problem(404, "not-found", "no such push URL")
    secret = rt.secrets.push_secrets.get(name)
    if secret is not None and not await _signed(request, rt, name, secret):
        rt.metrics.pushes_refused.labels(label, "signature").inc()
        rt.log.warning("push refused: signature not valid", upstream=name, job_id=job_id)
        raise Problem(401, "push-unverified", "the push's signature is missing or not valid")
    structlog.contextvars.bind_contextvars(job_id=job_id, upstream=name)
    status = await JobEvents(rt).pushed(name, job_id)
    rt.log.info("push received", status=status)
    return Response(status_code=200)


PUSH_ROUTES = [Route("/v1/push/{upstream}/{job_id}/{mac}", receive_push, methods=["POST"])]
