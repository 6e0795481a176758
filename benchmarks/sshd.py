"""
A throwaway sshd on a loopback port, the ssh reference of the suite.

A temporary host key, a temporary user key in a temporary authorized_keys, a
temporary config run as `sshd -D -f CONFIG`; all removed by stop(). If any
of it cannot be set up, L{SSHUnavailable} says why and the ssh rows of the
table say 'ssh unavailable'.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time

from common import Cleanup, freePort, log

#: sshd's compiled-in privilege separation directory (Debian, Ubuntu).
PRIVSEP_DIRS = ("/run/sshd", "/var/run/sshd", "/var/empty")


class SSHUnavailable(Exception):
    """No ssh reference on this machine; the message says why."""


class ThrowawaySSHD:
    def __init__(self, cleanup: Cleanup) -> None:
        self._cleanup = cleanup
        self.dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.user = getpass.getuser()
        self._madePrivsep: str | None = None
        self._madeDotSSH: str | None = None
        self.version = ""

    def start(self) -> ThrowawaySSHD:
        try:
            return self._start()
        except SSHUnavailable:
            self.stop()
            raise
        except (OSError, subprocess.SubprocessError) as e:
            self.stop()
            raise SSHUnavailable(f"cannot set up sshd: {e}") from None

    def _start(self) -> ThrowawaySSHD:
        sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
        ssh = shutil.which("ssh")
        keygen = shutil.which("ssh-keygen")
        if not (sshd and ssh and keygen):
            raise SSHUnavailable(
                "sshd, ssh or ssh-keygen not installed "
                "(apt-get install openssh-server openssh-client)"
            )
        self._ssh = ssh
        self.version = subprocess.run(
            [ssh, "-V"], capture_output=True, check=False, text=True
        ).stderr.strip()
        self.dir = tempfile.mkdtemp(prefix="jwbench-sshd-")
        self._cleanup.callback(self.stop)
        d = self.dir
        for name in ("host_key", "user_key"):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, name)],
                check=True,
                capture_output=True,
            )
        self.key = os.path.join(d, "user_key")
        authorized = os.path.join(d, "authorized_keys")
        shutil.copyfile(self.key + ".pub", authorized)
        os.chmod(authorized, 0o600)
        self.port = freePort()
        with open(os.path.join(d, "host_key.pub"), encoding="ascii") as f:
            hostKey = " ".join(f.read().split()[:2])
        self.knownHosts = os.path.join(d, "known_hosts")
        with open(self.knownHosts, "w", encoding="ascii") as f:
            f.write(f"[localhost]:{self.port},[127.0.0.1]:{self.port} {hostKey}\n")
        config = os.path.join(d, "sshd_config")
        root = os.geteuid() == 0
        with open(config, "w", encoding="ascii") as f:
            f.write(
                f"Port {self.port}\n"
                "ListenAddress 127.0.0.1\n"
                f"HostKey {d}/host_key\n"
                "PidFile none\n"
                f"AuthorizedKeysFile {authorized}\n"
                "AuthenticationMethods publickey\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                f"PermitRootLogin {'prohibit-password' if root else 'no'}\n"
                f"AllowUsers {self.user}\n"
                "StrictModes no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "PrintLastLog no\n"
                "LogLevel ERROR\n"
            )
        if root:
            for path in PRIVSEP_DIRS[:1]:
                if not os.path.isdir(path):
                    os.makedirs(path, mode=0o755)
                    self._madePrivsep = path
        check = subprocess.run(
            [sshd, "-t", "-f", config], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise SSHUnavailable(f"sshd -t: {check.stderr.strip()[:300]}")
        dotSSH = os.path.join(os.path.expanduser("~"), ".ssh")
        if not os.path.exists(dotSSH):
            self._madeDotSSH = dotSSH  # ssh creates ~/.ssh; we remove it again
        self._log = open(os.path.join(d, "sshd.log"), "wb")
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", config],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self._cleanup.process(self.proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SSHUnavailable(f"sshd did not start: {self._logText()}")
            time.sleep(0.05)
        probe = subprocess.run(
            self.argv("true"), capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode != 0:
            raise SSHUnavailable(
                f"ssh localhost true failed: {probe.stderr.strip()[:300]} "
                f"{self._logText()}"
            )
        log(f"throwaway sshd on 127.0.0.1:{self.port} ({self.version})")
        return self

    def _logText(self) -> str:
        if self.dir is None:
            return ""
        try:
            with open(os.path.join(self.dir, "sshd.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-300:]
        except OSError:
            return ""

    def argv(self, *command: str) -> list[str]:
        """C{ssh -p PORT localhost COMMAND}, with the temporary key and host key."""
        return [
            self._ssh,
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            self.key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.knownHosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            "LogLevel=ERROR",
            f"{self.user}@localhost",
            *command,
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self._madePrivsep is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._madePrivsep)
            self._madePrivsep = None
        if self._madeDotSSH is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._madeDotSSH)  # only if ssh left it empty
            self._madeDotSSH = None
