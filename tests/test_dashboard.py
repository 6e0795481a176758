"""The web dashboard's server side: GET /whoami and the files under /ui/."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from twisted.trial.unittest import TestCase

from jobworker.auth.permissions import PERMISSIONS, Role
from jobworker.server.requests import CONTENT_SECURITY_POLICY

from . import test_integration as integration
from .support import LiveServer
from .test_integration import call, expected

#: The dashboard's files, as packaged.
UI = resources.files("jobworker").joinpath("data/ui")


class WhoamiMatrixTests(TestCase):
    """GET /whoami: every role learns its own name, role and permissions."""

    checkDenial = integration.RBACMatrixTests.checkDenial
    matrix = integration.RBACMatrixTests.matrix

    async def test_whoamiMatrix(self) -> None:
        """Each role 200 with its row of the permission table; no credentials 401."""
        server = LiveServer(self)
        roles = {"alice": Role.DEVELOPER, "bob": Role.DEVELOPER}
        roles.update(rita=Role.READER, ada=Role.ADMIN)

        async def send(identity: str) -> tuple[Any, bytes]:
            return await call(server, "GET", "/whoami", identity)

        async def described(identity: str, response: Any, body: bytes) -> list[str]:
            role = roles[identity]
            wanted = {
                "user": identity,
                "role": role.value,
                "permissions": {p.value: s.value for p, s in PERMISSIONS[role].items()},
            }
            answer = json.loads(body)
            return [] if answer == wanted else [f"{identity}: {answer!r}"]

        await self.matrix(
            server, expected(alice=200, bob=200, rita=200, ada=200), send, described
        )
        response, body = await call(server, "GET", "/whoami?x=1", "alice")
        self.assertEqual(response.code, 400, body)

    async def test_readerCannotStop(self) -> None:
        """What the page hides follows the table: a Reader has no jobs.stop."""
        server = LiveServer(self)
        code, me = await server.json("GET", "/whoami", "rita")
        self.assertEqual(code, 200)
        self.assertNotIn("jobs.stop", me["permissions"])
        self.assertNotIn("jobs.logs", me["permissions"])
        code, me = await server.json("GET", "/whoami", "alice")
        self.assertEqual(me["permissions"]["jobs.stop"], "own")


class DashboardFilesTests(TestCase):
    """The files under /ui/: no credentials, right types, security headers always."""

    def assertSecurityHeaders(self, response: Any) -> None:
        headers = response.headers
        self.assertEqual(
            headers.getRawHeaders(b"content-security-policy"),
            [CONTENT_SECURITY_POLICY],
        )
        policy = CONTENT_SECURITY_POLICY.decode()
        for directive in (
            "default-src 'self'",
            "script-src 'self';",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ):
            self.assertIn(directive, policy)
        self.assertNotIn("unsafe-inline", policy)
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])

    async def test_servedWithoutCredentials(self) -> None:
        """/ui/ is index.html; each file with its type; no cookie is ever set."""
        server = LiveServer(self)
        types = {
            "/ui/": b"text/html; charset=utf-8",
            "/ui/index.html": b"text/html; charset=utf-8",
            "/ui/app.js": b"text/javascript; charset=utf-8",
            "/ui/app.css": b"text/css; charset=utf-8",
        }
        for path, contentType in types.items():
            response = await server.request("GET", path, None)
            body = await response.content()
            self.assertEqual(response.code, 200, path)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [contentType], path
            )
            name = path.rpartition("/")[2] or "index.html"
            self.assertEqual(body, UI.joinpath(name).read_bytes())
            self.assertSecurityHeaders(response)
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))

    async def test_headersWhateverThePathsSpelling(self) -> None:
        """
        /ui/ spelled another way the router takes as the same (a percent-
        encoded letter, a doubled slash) still has the security headers:
        the page was served without them, to be framed (clickjacking).
        """
        server = LiveServer(self)
        for path in ("/%75i/", "//ui/", "/%75i/app.js", "//ui/index.html"):
            response = await server.request("GET", path, None)
            await response.content()
            self.assertEqual(response.code, 200, path)
            self.assertSecurityHeaders(response)
            self.assertEqual(
                response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"], path
            )

    async def test_everyModuleIsServed(self) -> None:
        """Each packaged file is served (the modules import one another)."""
        server = LiveServer(self)
        names = [entry.name for entry in UI.iterdir()]
        self.assertIn("sse.js", names)
        for name in names:
            response = await server.request("GET", f"/ui/{name}", None)
            await response.content()
            self.assertEqual(response.code, 200, name)

    async def test_unknownAndTraversal(self) -> None:
        """Anything but a file of the folder is a JSON 404, with the headers."""
        server = LiveServer(self)
        for path in (
            "/ui/nothing.js",
            "/ui/../openapi.json",
            "/ui/%2e%2e%2fopenapi.json",
            "/ui/..%2fapi.py",
            "/ui/sub/app.js",
        ):
            response = await server.request("GET", path, None)
            body = await response.content()
            self.assertEqual(response.code, 404, (path, body))
            self.assertEqual(json.loads(body)["error"].split()[0], "no", path)
            # The router's 404s (a path no route has) too, not only the
            # dashboard's own.
            self.assertSecurityHeaders(response)
        response = await server.request("PUT", "/ui/app.js", None)
        body = await response.content()
        self.assertEqual(response.code, 405)
        self.assertEqual(json.loads(body), {"error": "method not allowed"})
        self.assertSecurityHeaders(response)

    async def test_folderAddress(self) -> None:
        """/ui, as a person types it, leads to /ui/ (with the headers)."""
        server = LiveServer(self)
        response = await server.http.get(server.url + "/ui", allow_redirects=False)
        await response.content()
        self.assertEqual(response.code, 308)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui/"])
        self.assertSecurityHeaders(response)
        response = await server.request("GET", "/ui?x=1", None)
        await response.content()
        self.assertEqual(response.code, 400)

    async def test_queryStringRefused(self) -> None:
        """A query string under /ui/ is a JSON 400, as on the API's routes."""
        server = LiveServer(self)
        for path in ("/ui/?x=1", "/ui/app.js?v=2"):
            response = await server.request("GET", path, None)
            body = await response.content()
            self.assertEqual(response.code, 400, (path, body))
            self.assertIn("error", json.loads(body))
            self.assertSecurityHeaders(response)

    async def test_notModified(self) -> None:
        """A client's current copy (If-None-Match) gets a 304 with the headers."""
        server = LiveServer(self)
        response = await server.request("GET", "/ui/app.js", None)
        await response.content()
        etag = response.headers.getRawHeaders(b"etag")[0]
        response = await server.request(
            "GET", "/ui/app.js", None, headers={b"if-none-match": [etag]}
        )
        self.assertEqual((response.code, await response.content()), (304, b""))
        self.assertSecurityHeaders(response)

    async def test_onlyGet(self) -> None:
        """The files are read-only: POST is a 405."""
        server = LiveServer(self)
        response = await server.request("POST", "/ui/app.js", None, body={})
        await response.content()
        self.assertEqual(response.code, 405)
