"""GET /console as served: its files, headers that keep it to its own origin, and no
asset or key in any URL (the browser flow is in test_console_browser.py)."""

from __future__ import annotations

import re
from importlib import resources

from tests.test_api import assert_problem

FILES = ("index.html", "console.js", "console.css")


def _text(name: str) -> str:
    return resources.files("bridge.api.console").joinpath(name).read_text()


def test_the_console_loads_nothing_from_another_origin():
    for name in FILES:
        text = _text(name)
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "url(" not in text, name
    js = _text("console.js")
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js  # data as text only
    assert "localStorage" not in js  # the key lives in sessionStorage only
    assert re.search(r"Authorization: `Bearer \$\{apiKey\(\)\}`", js)
    # URLs the page builds carry filters and cursors only, never the key
    for url in re.findall(r"`(v1/[^`]*)`", js):
        assert "apiKey" not in url and "KEY" not in url, url


async def test_console_is_served_with_a_strict_policy(make_stack):
    s = await make_stack()
    page = await s.client.get("/console", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="console/console.js"' in page.text
    for name, media in (("console.js", "text/javascript"), ("console.css", "text/css")):
        r = await s.client.get(f"/console/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media)
        assert r.content == resources.files("bridge.api.console").joinpath(name).read_bytes()
    assert_problem(await s.client.get("/console/__init__.py"), 404, "not-found")
    assert_problem(await s.client.get("/console/index.html"), 404, "not-found")


async def test_a_worker_serves_no_console(make_stack):
    s = await make_stack(role="worker")
    assert (await s.client.get("/console")).status_code == 404
