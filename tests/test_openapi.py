"""The OpenAPI document matches the routes Klein serves, both ways."""

from __future__ import annotations

import json
import re

from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.api import OPENAPI, JobsAPI

from .support import LiveServer

#: The routes that need no credentials (so document no 401): the health
#: probe and the dashboard's static files.
PUBLIC = {"/healthz", "/", "/ui", "/ui/", "/ui/{file}"}


def servedRoutes() -> set[tuple[str, str]]:
    """(path, method) of every Klein route, paths in OpenAPI form."""
    routes = set()
    for rule in JobsAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?jobId>", "{id}", rule.rule)
        path = re.sub(r"<(?:\w+:)?file>", "{file}", path)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    return routes


class DocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.doc = json.loads(OPENAPI)

    def test_everyRouteDocumentedAndViceVersa(self) -> None:
        """Each served route is in the document, each documented one is served."""
        documented = {
            (path, method)
            for path, operations in self.doc["paths"].items()
            for method in operations
        }
        self.assertEqual(servedRoutes(), documented)

    def test_version(self) -> None:
        """It is OpenAPI 3.1 and every operation documents its errors."""
        self.assertTrue(self.doc["openapi"].startswith("3.1"))
        for path, operations in self.doc["paths"].items():
            for method, operation in operations.items():
                self.assertIn("405", operation["responses"], (path, method))
                if path not in PUBLIC:
                    self.assertIn("401", operation["responses"], (path, method))
                    # Any password check may be refused (--max-password-checks).
                    busy = operation["responses"].get("503", {})
                    self.assertIn(
                        "Retry-After", busy.get("headers", {}), (path, method)
                    )

    def test_whoamiNamesEveryPermission(self) -> None:
        """/whoami's permissions: each of the table (jobs.prioritize was missing)."""
        from jobworker.auth.permissions import Permission

        schema = self.doc["paths"]["/whoami"]["get"]["responses"]["200"]["content"]
        text = schema["application/json"]["schema"]["properties"]["permissions"]
        for permission in Permission:
            self.assertIn(permission.value, text["description"])

    def test_publicRoutesNeedNoCredentials(self) -> None:
        """The public routes say so (security: []); no other route does."""
        public = {
            path
            for path, operations in self.doc["paths"].items()
            for operation in operations.values()
            if operation.get("security") == []
        }
        self.assertEqual(public, PUBLIC)

    def test_jobSchemaMatchesRecord(self) -> None:
        """The Job schema lists exactly the fields a job record sends."""
        from jobworker.jobs.records import JobRecord

        record = JobRecord(id="x", command="c", args=[], owner="o", created_at=0.0)
        schema = self.doc["components"]["schemas"]["Job"]
        self.assertEqual(set(schema["properties"]), set(record.toJSON()))


class ServedTests(TestCase):
    async def test_servedAsIs(self) -> None:
        """GET /openapi.json serves the document byte for byte (authenticated)."""
        server = LiveServer(self)
        response = await server.request("GET", "/openapi.json", "rita")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), OPENAPI)
        response = await server.request("GET", "/openapi.json", None)
        self.assertEqual(response.code, 401)
        await response.content()
