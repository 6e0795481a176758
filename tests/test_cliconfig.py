"""jw settings (flags, environment, config file), completion, tables, start-up cost."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.cli import COMPLETION, age
from jobworker.client.config import (
    ConfigError,
    caInUse,
    checkServer,
    configPath,
    readConfig,
    resolve,
    stateDir,
    trustedPath,
)

from .support import JW, LiveServer, runJW


class SettingsTests(SynchronousTestCase):
    def test_configShowsTheCAInUse(self) -> None:
        """
        C{jw config} names the CA C{jw} would verify the server with, and
        why: for a loopback server, the one this user's server made (what the
        quick start uses), else the development CA; one trusted at C{jw
        login}; none for another host, saying what to do.
        """
        base = os.path.abspath(self.mktemp())
        environ = {
            "XDG_CONFIG_HOME": os.path.join(base, "config"),
            "XDG_STATE_HOME": os.path.join(base, "state"),
        }
        path = configPath(environ)
        local = resolve({"server": "https://localhost:8443"}, environ, path)
        self.assertEqual(caInUse(local, environ)[0], "(none)")
        self.assertIn(
            "jw login --server https://localhost:8443", caInUse(local, environ)[1]
        )

        made = os.path.join(stateDir(environ), "tls", "ca.pem")
        os.makedirs(os.path.dirname(made))
        with open(made, "w") as f:
            f.write("a CA\n")
        self.assertEqual(caInUse(local, environ), (made, caInUse(local, environ)[1]))
        self.assertIn("this user's server", caInUse(local, environ)[1])

        remote = resolve({"server": "https://jobs.example.com"}, environ, path)
        value, why = caInUse(remote, environ)
        self.assertEqual(value, "(none)")
        self.assertIn("jw login", why)
        saved = trustedPath(os.path.dirname(path), remote.server)
        os.makedirs(os.path.dirname(saved))
        with open(saved, "w") as f:
            f.write("a CA\n")
        self.assertEqual(
            caInUse(remote, environ), (saved, "default, trusted at jw login")
        )

        flagged = resolve({"server": remote.server, "ca": "/etc/ca.pem"}, environ, path)
        self.assertEqual(caInUse(flagged, environ), ("/etc/ca.pem", "--ca"))

    def write(self, text: str) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "config.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_precedence(self) -> None:
        """A flag beats the environment, which beats the file, which beats defaults."""
        path = self.write('server = "https://file:1"\nca = "ca.pem"\nuser = "carol"\n')
        both = resolve(
            {"server": "https://flag:1"}, {"JW_SERVER": "https://env:1"}, path
        )
        self.assertEqual(
            (both.server, both.origins["server"]), ("https://flag:1", "--server")
        )
        env = resolve({}, {"JW_SERVER": "https://env:1"}, path)
        self.assertEqual(
            (env.server, env.origins["server"]), ("https://env:1", "JW_SERVER")
        )
        fromFile = resolve({}, {}, path)
        self.assertEqual(fromFile.server, "https://file:1")
        self.assertEqual(fromFile.ca, os.path.join(os.path.dirname(path), "ca.pem"))
        self.assertEqual(fromFile.user, "carol")
        defaults = resolve({}, {}, path + "-absent")
        self.assertEqual(
            (defaults.server, defaults.ca, defaults.user),
            ("https://localhost:8443", "", None),
        )

    def test_badFiles(self) -> None:
        """Unknown keys, non-strings and broken TOML are clear errors."""
        for text, expected in (
            ("colour = 'blue'\n", "unknown setting"),
            ("server = 3\n", "must be a non-empty string"),
            ("server = \n", "not valid TOML"),
        ):
            error = self.assertRaises(ConfigError, readConfig, self.write(text))
            self.assertIn(expected, str(error))

    def test_configPath(self) -> None:
        """XDG_CONFIG_HOME wins; else ~/.config."""
        self.assertEqual(
            configPath({"XDG_CONFIG_HOME": "/x"}), "/x/jobworker/config.toml"
        )
        self.assertEqual(configPath({"HOME": "/h"}), "/h/.config/jobworker/config.toml")

    def test_age(self) -> None:
        """Relative times in whole units."""
        self.assertEqual(age("1970-01-01T00:00:00.000Z", 42), "42s")
        self.assertEqual(age("1970-01-01T00:00:00.000Z", 3 * 3600 + 5), "3h")
        self.assertEqual(age("1970-01-01T00:00:00.000Z", 2 * 86400), "2d")
        self.assertEqual(age("garbage", 0), "?")

    def test_bashCompletionParses(self) -> None:
        """The bash script is valid bash."""
        result = subprocess.run(
            ["bash", "-n"], input=COMPLETION["bash"].encode(), capture_output=True
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_cliImportsNoServerModule(self) -> None:
        """jw loads only the client side (start-up stays fast)."""
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, jobworker.client.cli; "
                "print(' '.join(sorted(m for m in sys.modules if 'jobworker' in m)))",
            ],
            capture_output=True,
            check=True,
        )
        loaded = set(result.stdout.decode().split())
        self.assertEqual(
            loaded,
            {
                "jobworker",
                "jobworker.client",
                "jobworker.client.calls",
                "jobworker.client.cli",
                "jobworker.client.completion",
                "jobworker.client.config",
                "jobworker.client.errors",
                "jobworker.client.failures",
                "jobworker.client.interrupts",
                "jobworker.client.parser",
                "jobworker.client.session",
                "jobworker.client.show",
                "jobworker.client.streams",
                "jobworker.client.verbs",
                # The frame format: pure, shared with the server's writer.
                "jobworker.framing",
                # A bounded read of a file (the CA's, as the server reads
                # its own): stdlib only, shared with the server.
                "jobworker.jobs",
                "jobworker.jobs.folders",
                "jobworker.pemfiles",
                "jobworker.tlserrors",
                "jobworker.units",
            },
        )
        # Nor Twisted, treq or pyOpenSSL: short commands run without them
        # (jobworker.client.quick), so jw status costs a Python start.
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, jobworker.client.cli; "
                "print(' '.join(sorted(m for m in sys.modules "
                "if m.split('.')[0] in ('twisted', 'treq', 'OpenSSL'))))",
            ],
            capture_output=True,
            check=True,
        )
        self.assertEqual(result.stdout.strip(), b"")


class ConfigCommandTests(TestCase):
    async def test_configFileUsed(self) -> None:
        """A config file supplies server, CA and user; jw config shows whence."""
        server = LiveServer(self)
        home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(home, "jobworker"))
        from .support import CA

        with open(os.path.join(home, "jobworker", "config.toml"), "w") as f:
            f.write(f'server = "{server.url}"\nca = "{CA}"\nuser = "alice"\n')
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "XDG_CONFIG_HOME": home,
            "JW_PASSWORD": "alice-pass",
        }
        out, err, code = await getProcessOutputAndValue(JW, ["config"], env=env)
        self.assertEqual(code, 0, err)
        self.assertIn(f"server = {server.url}".encode(), out)
        self.assertIn(b"user = alice", out)
        out, err, code = await getProcessOutputAndValue(
            JW, ["exec", "--", "true"], env=env
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.strip()), 36)

    async def test_configSaysWhichCredentialsAreUsed(self) -> None:
        """
        jw config said "login token = valid" with JW_TOKEN set (which is
        used instead) and with JW_PASSWORD set (which wins over the saved
        token): it now says which credentials a command would send, in the
        order jw picks them.
        """
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "XDG_CONFIG_HOME": os.path.abspath(self.mktemp()),
            "JW_SERVER": "https://127.0.0.1:1",
        }

        async def credentials(**extra: str) -> str:
            out, err, code = await getProcessOutputAndValue(
                JW, ["config"], env={**env, **extra}
            )
            self.assertEqual(code, 0, err)
            [line] = [
                line for line in out.decode().splitlines() if line.startswith("sent")
            ]
            return line

        self.assertIn("a prompt", await credentials())
        self.assertIn("JW_TOKEN", await credentials(JW_TOKEN="jw1.x.y"))
        self.assertIn(
            "JW_USER/JW_PASSWORD (alice)",
            await credentials(JW_USER="alice", JW_PASSWORD="p"),
        )
        self.assertIn(
            "client certificate",
            await credentials(JW_CERT="/c.pem", JW_KEY="/k.pem", JW_TOKEN="t"),
        )

    async def test_tableShowsAge(self) -> None:
        """jw list shows an AGE column with relative times."""
        server = LiveServer(self)
        await server.createJob("true")
        out, err, code = await runJW(server.url, "list")
        self.assertEqual(code, 0, err)
        header, row = out.decode().splitlines()[:2]
        self.assertEqual(
            header.split()[:6], ["ID", "OWNER", "STATUS", "EXIT", "AGE", "DURATION"]
        )
        self.assertRegex(row, r"RUNNING|COMPLETED")
        self.assertRegex(row, r"\s\d+s\s")


class ServerURLTests(SynchronousTestCase):
    """What a server URL may be: https, a host, a port; nothing else."""

    def test_badPortNamesTheURL(self) -> None:
        """A port that is not a number is refused naming the URL (it said
        "Port could not be cast to integer value", naming nothing)."""
        for url in ("https://localhost:notaport", "https://localhost:99999"):
            error = self.assertRaises(ConfigError, checkServer, url)
            self.assertIn(repr(url), str(error))

    def test_queryOrFragmentRefused(self) -> None:
        """A query or fragment is refused (a path is the API's prefix behind
        a reverse proxy: test_quickclient.PrefixTests)."""
        for url in ("https://h/?x=1", "https://h#f"):
            error = self.assertRaises(ConfigError, checkServer, url)
            self.assertIn("no query or fragment", str(error))
        for url in (
            "https://localhost:8443",
            "https://localhost:8443/",
            "https://[::1]",
            "HTTPS://h/api/",
        ):
            checkServer(url)
