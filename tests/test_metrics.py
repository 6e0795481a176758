"""Prometheus metrics: what is counted, and who may read it."""

from __future__ import annotations

import treq
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.metrics import routeLabel

from .support import LiveServer, basic


class RouteLabelTests(SynchronousTestCase):
    def test_labels(self) -> None:
        """Job ids are folded; unknown paths share one label."""
        jobId = b"0b7c9f1e-1111-4222-8333-444455556666"
        self.assertEqual(routeLabel(b"/jobs"), "/jobs")
        self.assertEqual(routeLabel(b"/jobs?limit=3"), "/jobs")
        self.assertEqual(routeLabel(b"/jobs/" + jobId), "/jobs/{id}")
        self.assertEqual(routeLabel(b"/jobs/" + jobId + b"/logs"), "/jobs/{id}/logs")
        self.assertEqual(routeLabel(b"/metrics"), "/metrics")
        self.assertEqual(routeLabel(b"/jobs/" + jobId + b"/stdin"), "/jobs/{id}/stdin")
        self.assertEqual(routeLabel(b"/tokens"), "/tokens")
        self.assertEqual(routeLabel(b"/whoami"), "/whoami")
        self.assertEqual(routeLabel(b"/ui/"), "/ui/")
        self.assertEqual(routeLabel(b"/ui/app.js"), "/ui/")
        self.assertEqual(routeLabel(b"/ui"), "/ui/")
        self.assertEqual(routeLabel(b"/uix"), "other")
        self.assertEqual(routeLabel(b"/etc/passwd"), "other")
        self.assertEqual(routeLabel(b"/jobs/x/y/z"), "other")


class LiveMetricsTests(TestCase):
    async def test_countsAndAccess(self) -> None:
        """Jobs, spawn failures, output, requests and auth failures are counted."""
        server = LiveServer(self)
        job = await server.createJob("echo", "12345")
        await server.waitEnded(job["id"])
        await server.createJob("no-such-command-for-metrics")
        response = await server.request("GET", "/jobs", "alice")
        await treq.content(response)
        bad = await server.http.request(
            "GET", server.url + "/jobs", headers=basic("alice", "wrong")
        )
        self.assertEqual(bad.code, 401)
        await treq.content(bad)
        response = await server.request("GET", "/metrics", "ada")
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )
        text = (await treq.content(response)).decode()
        for line in (
            "jobworker_job_starts_total 1.0",
            "jobworker_spawn_failures_total 1.0",
            'jobworker_jobs{status="COMPLETED"} 1.0',
            'jobworker_jobs{status="FAILED"} 1.0',
            'jobworker_output_bytes_total{stream="stdout"} 6.0',
            "jobworker_auth_failures_total 1.0",
            'jobworker_http_requests_total{code="401",method="GET",route="/jobs"} 1.0',
            'jobworker_http_requests_total{code="201",method="POST",route="/jobs"} 2.0',
        ):
            self.assertIn(line, text)
        self.assertIn(
            'jobworker_http_request_seconds_bucket{le="+Inf",method="POST",route="/jobs"}',
            text,
        )
        for user, code in (("rita", 403), ("alice", 403), (None, 401)):
            response = await server.request("GET", "/metrics", user)
            self.assertEqual(response.code, code, user)
            await treq.content(response)

    async def test_outputThreads(self) -> None:
        """A job printing at full speed has its stream taken by a thread:
        counted, and the thread is free again once the job ended."""
        server = LiveServer(self)
        job = await server.createJob("head", "-c", str(32 << 20), "/dev/zero")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["stdout_bytes"], 32 << 20)
        response = await server.request("GET", "/metrics", "ada")
        text = (await treq.content(response)).decode()
        for line in (
            'jobworker_output_threads{state="busy"} 0.0',
            'jobworker_output_threads{state="limit"} 4.0',
            "jobworker_output_streams_pumped_total 1.0",
        ):
            self.assertIn(line, text)
