"""The dashboard at /ui/ in Debian's chromium, headless, against a real twistd."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.trial.unittest import TestCase

from ..support import PASSWORDS
from .harness import Browser, Relay, requireBrowserRun, startTwistd

#: Prints numbered lines, every third on stderr, one every C{pause} seconds.
NUMBERED = (
    "for i in $(seq {n}); do "
    'if [ $((i % 3)) = 0 ]; then echo "line $i" >&2; else echo "line $i"; fi; '
    "sleep {pause}; done"
)


def lines(text: str | None) -> list[str]:
    return [line for line in (text or "").split("\n") if line]


class DashboardTests(TestCase):
    """Log in, see jobs live, follow a log, stop; what a Reader does not see."""

    timeout = 120

    def setUp(self) -> None:
        requireBrowserRun()

    async def test_aliceFollowsAndStops(self) -> None:
        """
        alice logs in; a job started through the API appears without a
        reload; its output arrives live and in order (stdout and stderr told
        apart); the stop button stops it and the page says STOPPED.
        """
        server = await startTwistd(self)
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "alice", PASSWORDS["alice"])
            b.wait(lambda d: b.text("tbody") is not None)
            script = NUMBERED.format(n=30, pause=0.3) + "; echo done; sleep 300"
            job = b.onReactor(server.createJob, "sh", "-c", script, name="ticker")
            # It appears without a reload, at the next refresh of the page.
            row = f'tr[data-id="{job["id"]}"]'
            b.wait(lambda d: b.text(row) is not None, timeout=10)
            self.assertIn("RUNNING", b.text(row))
            # Keyboard: focus the job's link, Enter opens it.
            from selenium.webdriver.common.keys import Keys

            link = b.driver.find_element("css selector", f"{row} a")
            link.send_keys(Keys.ENTER)
            b.wait(lambda d: b.text("#job-status") == "RUNNING")
            # Live: some lines while the job still runs, then all, in order.
            b.wait(lambda d: "line 4" in (b.text("pre.log") or ""))
            early = lines(b.text("pre.log"))
            self.assertLess(len(early), 31, "the output was not live")
            self.assertEqual(b.text("#job-status"), "RUNNING")
            b.wait(lambda d: "done" in (b.text("pre.log") or ""), timeout=30)
            shown = lines(b.text("pre.log"))
            self.assertEqual(shown, [f"line {i}" for i in range(1, 31)] + ["done"])
            stderr = lines(
                b.driver.execute_script(
                    "return [...document.querySelectorAll('pre.log .stderr')]"
                    ".map(e => e.textContent).join('')"
                )
            )
            self.assertEqual(stderr, [f"line {i}" for i in range(3, 31, 3)])
            b.screenshot("ui-job.png")
            stop = b.byId("stop")
            self.assertTrue(stop.is_displayed())
            stop.click()
            b.wait(lambda d: b.text("#job-status") == "STOPPED", timeout=20)
            self.assertFalse(stop.is_displayed())
            self.assertEqual(b.text(".record dd:last-of-type"), "alice")

        await browser.run(scenario)
        _, record = await server.json("GET", "/jobs?name=ticker", "alice")
        self.assertEqual(record["jobs"][0]["status"], "STOPPED")

    async def test_adminPanelAndNarrowScreen(self) -> None:
        """
        ada (Admin) sees the metrics panel drawn from /metrics; alice does
        not. At 320 px wide nothing overflows sideways but the job table.
        """
        server = await startTwistd(self)
        for index in range(3):
            await server.createJob("sh", "-c", f"echo {index}", name=f"quick-{index}")
        running = await server.createJob("sleep", "300", labels={"team": "ml"})
        browser = await Browser.start(self)
        points = (
            "return [...document.querySelectorAll('.chart polyline')]"
            ".map(p => p.getAttribute('points'))"
        )

        def scenario(b: Browser) -> None:
            b.login(server.url, "ada", PASSWORDS["ada"])
            b.wait(lambda d: b.text(".chart-value") not in (None, "…"))
            self.assertEqual(len(b.driver.execute_script(points)), 4)
            b.wait(lambda d: b.text(".chart .chart-value") == "1")  # running
            rows = "tbody tr"
            b.wait(lambda d: len(d.find_elements("css selector", rows)) == 4)
            b.screenshot("ui-jobs.png")
            # Filters: a status chosen from the list, a label typed and applied.
            from selenium.webdriver.support.ui import Select

            Select(b.driver.find_element("name", "status")).select_by_value("COMPLETED")
            b.wait(lambda d: len(d.find_elements("css selector", rows)) == 3)
            self.assertIn("status=COMPLETED", b.driver.current_url)
            Select(b.driver.find_element("name", "status")).select_by_value("")
            b.driver.find_element("name", "label").send_keys("team=ml\n")
            b.wait(lambda d: len(d.find_elements("css selector", rows)) == 1)
            self.assertIn(running["id"], b.text("tbody"))
            b.driver.set_window_size(320, 700)
            width = "return [document.documentElement.scrollWidth, window.innerWidth]"
            scroll, inner = b.driver.execute_script(width)
            self.assertLessEqual(scroll, inner)
            b.byId("logout").click()
            b.login(server.url, "alice", PASSWORDS["alice"])
            b.wait(lambda d: b.text("tbody") is not None)
            self.assertIsNone(b.text(".metrics"))

        await browser.run(scenario)
        await server.json("POST", f"/jobs/{running['id']}/stop", "ada", {})

    async def test_readerSeesNoStopButton(self) -> None:
        """rita (Reader) sees alice's running job, no stop button, no output."""
        server = await startTwistd(self)
        job = await server.createJob("sleep", "300")
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "rita", PASSWORDS["rita"])
            b.driver.get(f"{server.url}/ui/#/jobs/{job['id']}")
            b.wait(lambda d: b.text("#job-status") == "RUNNING")
            b.wait(lambda d: b.text("p.note") is not None)
            self.assertFalse(b.byId("stop").is_displayed())
            self.assertIsNone(b.text("pre.log"))
            # alice, the owner, does see it (the same page, another user).
            b.byId("logout").click()
            b.login(server.url, "alice", PASSWORDS["alice"])
            b.driver.get(f"{server.url}/ui/#/jobs/{job['id']}")
            b.wait(lambda d: b.byId("stop").is_displayed())

        await browser.run(scenario)
        await server.json("POST", f"/jobs/{job['id']}/stop", "alice", {})

    async def test_expiredTokenReturnsToLogin(self) -> None:
        """A token the server no longer takes brings back the login form."""
        server = await startTwistd(self, "--token-ttl=2")
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "alice", PASSWORDS["alice"])
            b.wait(lambda d: b.byId("login").is_displayed(), timeout=15)
            self.assertFalse(b.byId("logout").is_displayed())
            self.assertIsNone(
                b.driver.execute_script(
                    "return sessionStorage.getItem('jobworker.token')"
                )
            )

        await browser.run(scenario)


class TailTests(TestCase):
    """A long log starts with its tail; "Load earlier" shows the rest."""

    timeout = 120

    def setUp(self) -> None:
        requireBrowserRun()

    async def test_loadEarlier(self) -> None:
        """1,500 lines: the last 1,000 first, then all of them, once each."""
        server = await startTwistd(self)
        job = await server.createJob("seq", "1", "1500")
        await server.waitEnded(job["id"])
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "alice", PASSWORDS["alice"])
            b.driver.get(f"{server.url}/ui/#/jobs/{job['id']}")
            b.wait(lambda d: b.text(".log-state") == "complete")
            self.assertEqual(
                lines(b.text("pre.log")), [str(i) for i in range(501, 1501)]
            )
            earlier = b.driver.find_element("xpath", "//button[.='Load earlier']")
            self.assertTrue(earlier.is_displayed())
            earlier.click()
            b.wait(lambda d: not earlier.is_displayed())
            b.wait(lambda d: b.text(".log-state") == "complete")
            self.assertEqual(lines(b.text("pre.log")), [str(i) for i in range(1, 1501)])

        await browser.run(scenario)


class SafetyTests(TestCase):
    """Job data is text, never markup; the CSP refuses inline script."""

    timeout = 120

    def setUp(self) -> None:
        requireBrowserRun()

    async def test_markupAndEscapesShownAsText(self) -> None:
        """
        Output with <script>, markup and terminal escapes, and a command line
        with an <img onerror>, are shown as text: nothing runs, no element is
        made, the escapes are stripped; bytes that are not UTF-8 are a marker.
        """
        server = await startTwistd(self)
        output = (
            r"printf '<script>window.pwned=1</script>\033[31mred\033[0m"
            r" <b>bold</b>\033]0;title\007\n'; printf '\377\376\n' >&2"
        )
        job = await server.createJob(
            "sh", "-c", output, "<img src=x onerror=window.pwned=2>"
        )
        await server.waitEnded(job["id"])
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "alice", PASSWORDS["alice"])
            row = f'tr[data-id="{job["id"]}"]'
            b.wait(lambda d: b.text(row) is not None)
            self.assertIn("<img src=x onerror=window.pwned=2>", b.text(row))
            b.driver.get(f"{server.url}/ui/#/jobs/{job['id']}")
            b.wait(lambda d: "binary" in (b.text("pre.log") or ""))
            text = b.text("pre.log")
            self.assertIn("<script>window.pwned=1</script>red <b>bold</b>\n", text)
            self.assertNotIn("\x1b", text)
            self.assertIn("[3 bytes of binary output]", text)
            count = "return document.querySelectorAll(arguments[0]).length"
            for tag in ("script", "b", "img"):
                self.assertEqual(b.driver.execute_script(count, f"main {tag}"), 0, tag)
            self.assertIsNone(b.driver.execute_script("return window.pwned"))

        await browser.run(scenario)

    async def test_bidiControlsShownAsEscapes(self) -> None:
        """
        A command line and labels with right-to-left overrides (U+202E,
        U+2066, U+2069) were shown as they are, so the browser reordered
        them: a label cell read "owner=ops=maet ,alice" (attacker round
        6b). Such characters are shown as escapes, as jw shows them.
        """
        server = await startTwistd(self)
        job = await server.createJob(
            "echo",
            "safe\u202e\u2066txt.exe",
            labels={"team": "\u202eops", "owner": "alice"},
        )
        await server.waitEnded(job["id"])
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "alice", PASSWORDS["alice"])
            row = f'tr[data-id="{job["id"]}"]'
            b.wait(lambda d: b.text(row) is not None)
            text = b.text(row)
            for raw in ("\u202e", "\u2066"):
                self.assertNotIn(raw, text)
            self.assertIn("safe\\u202e\\u2066txt.exe", text)
            self.assertIn("team=\\u202eops", text)
            b.driver.get(f"{server.url}/ui/#/jobs/{job['id']}")
            b.wait(lambda d: "txt.exe" in (b.text("dl.record") or ""))
            self.assertNotIn("\u202e", b.text("dl.record"))

        await browser.run(scenario)

    async def test_cspBlocksInlineScript(self) -> None:
        """An inline script put in the page does not run; the console says why."""
        server = await startTwistd(self)
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.login(server.url, "alice", PASSWORDS["alice"])
            b.console()
            ran = b.driver.execute_script(
                "const s = document.createElement('script');"
                "s.textContent = 'window.injected = 1';"
                "document.body.append(s);"
                "return window.injected;"
            )
            self.assertIsNone(ran)
            messages = b.wait(
                lambda d: [m for m in b.console() if "Content Security Policy" in m]
            )
            self.assertRegex(messages[0], "inline script")
            self.assertRegex(messages[0], re.escape("script-src 'self'"))

        await browser.run(scenario)


class ResumeTests(TestCase):
    """A dropped connection: the log resumes with no gap and no repeat."""

    timeout = 120

    def setUp(self) -> None:
        requireBrowserRun()

    async def test_dropResumes(self) -> None:
        """
        The page follows through a relay (between the browser and the
        twistd) whose connections are cut twice mid-stream; every line
        arrives once, in order.

        The job waits on its stdin after line 10 and after line 25, and
        the test lets it go on only once it has cut the relay: the stream
        cannot end before a cut, however slow the browser is, and lines
        keep coming while the page connects again.
        """
        server = await startTwistd(self)
        relay = Relay(self, server.port)
        script = "; read go; ".join(
            NUMBERED.format(n=f"{first} {last}", pause=0.05)
            for first, last in ((1, 10), (11, 25), (26, 50))
        )
        job = await server.createJob("sh", "-c", script, stdin=True)
        browser = await Browser.start(self)
        drops: list[int] = []

        def goOn(eof: bool) -> Any:
            path = f"/jobs/{job['id']}/stdin" + ("?eof=true" if eof else "")
            response = blockingCallFromThread(
                reactor,
                server.request,
                "POST",
                path,
                raw=b"" if eof else b"go\n",
                headers={b"content-type": [b"application/octet-stream"]},
            )
            self.assertEqual(response.code, 200)

        def scenario(b: Browser) -> Any:
            b.login(relay.url, "alice", PASSWORDS["alice"])
            b.driver.get(f"{relay.url}/ui/#/jobs/{job['id']}")
            for seen, eof in (("line 10", False), ("line 25", True)):
                b.wait(lambda d, seen=seen: seen in (b.text("pre.log") or ""))
                before = relay.accepted
                drops.append(blockingCallFromThread(reactor, relay.drop))
                goOn(eof)
                # The page connects again (and resumes from its last event).
                b.wait(lambda d, before=before: relay.accepted > before, timeout=15)
            b.wait(lambda d: b.text("#job-status") == "COMPLETED", timeout=30)
            b.wait(lambda d: b.text(".log-state") == "complete")
            return lines(b.text("pre.log"))

        shown = await browser.run(scenario)
        self.assertEqual(shown, [f"line {i}" for i in range(1, 51)])
        self.assertEqual(len(drops), 2)
        self.assertTrue(all(drops), drops)
