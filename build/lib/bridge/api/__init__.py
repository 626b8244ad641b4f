"""The HTTP API: the Starlette app, job routes, problems (RFC 9457) and the OpenAPI document.

Talks to the engine through its public objects; knows nothing of upstream wire formats."""
