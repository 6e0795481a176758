"""
The server's TLS set-up at start: its certificate (given, or its own made in
the state dir), TLS 1.3 options, and the rule that the development
certificate serves loopback only.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from datetime import datetime
from typing import Any

from cryptography import x509
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from ..auth.authenticator import chainEnds, earliestEnd
from ..errors import Forbidden
from ..tls import (
    TLSConfigError,
    clientAuthorities,
    clientCAKeys,
    holdsDevelopmentCA,
    isDevelopmentCertificate,
    issuingCA,
    publicKeySHA256,
    serverOptions,
    stillTrusted,
    validityProblem,
    withClientCAs,
)
from .options import Options, defaultStateDir
from .reloads import Reloads
from .selfcert import SelfCertError, ensureServerCertificate
from .startup import StartupError, fatal, secretFile, secretFileProblem
from .tlswrites import countHandshakes

log = Logger(namespace="jobworker.server.tap")

#: The CAs of a client certificate's chain its token names, at most (each
#: 65 characters of a token's 1,024).
MAX_CHAIN_CAS = 5


def isLoopback(interface: str) -> bool:
    """Whether listening on C{interface} serves this host only."""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:  # "" (every interface) or a host name
        return False


def _over(ends: float | None) -> bool:
    """Whether the time C{ends} (epoch seconds; None: never) has passed."""
    return ends is not None and ends <= time.time()


@implementer(IOpenSSLContextFactory)
class ServedTLS:
    """
    The server's TLS options (L{tlsOptions}), made again from its files on
    a reload (SIGHUP): connections made after it get the certificate then
    in the files (a renewed one; the server's own is renewed if due), those
    made before keep theirs. A reload that fails (a file missing or no
    regular file, a key that does not match its certificate, a certificate
    out of date, the server's own CA gone) keeps what is served, and says
    why.
    """

    def __init__(self, config: Options, reloads: Reloads | None = None) -> None:
        self._config = config
        #: Told what each reload made of the files (L{Reloads}).
        self._reloads = reloads if reloads is not None else Reloads()
        #: The options served, and the client CAs in force: (the options'
        #: context, a store, the keys' SHA-256 by key and alone), read as
        #: they are put in force, not when first needed (an edit of the file
        #: without a SIGHUP took effect in part: operator round 38).
        self._options, self._authorities = _throughTheBundleOnly(
            _options(config, reloading=False), config["client-ca"]
        )
        self._reloads.certificateDates = _dates(self._options)
        self._reloads.caDates = _ownCADates(config)

    def getContext(self) -> Any:
        """The context of a new connection: the options in force."""
        return self._options.getContext()

    def certificateProblem(self, transport: Any, certificate: Any) -> str | None:
        """
        Why the client C{certificate} of the connection C{transport} no
        longer lets in (None: it does): out of its dates now, or, presented
        before a reload that changed the client CAs, signed by none of them
        now, or verified through a CA not in them (one the client sent).
        OpenSSL checked it at the handshake only: a connection kept busy
        went on as its user after its certificate expired, or after its CA
        was removed (attacker round 27).
        """
        if certificate.has_expired():
            return "has expired"
        handle = transport.getHandle()
        context = self.getContext()
        if getattr(transport, "_verifiedFor", None) is not context:
            if handle.get_context() is context:
                verified = handle.get_verified_chain() or []
            else:
                # Presented before a reload that changed the client CAs: by
                # them now, and held to the end of the chain it verifies by
                # now (a renewed root's: the old one's end cut it: late
                # review 33), not the one of its handshake.
                chain = handle.get_peer_cert_chain() or []
                verified = stillTrusted(self._clientCAs()[0], certificate, chain)
                if verified is None:
                    if _over(chainEnds(transport, certificate)):
                        return "has expired"
                    return "is not signed by a CA of --client-ca now"
                transport._chainEnds = earliestEnd(verified)
            # Through CAs of the bundle only, once a connection and reload:
            # OpenSSL takes the intermediates a client sends, and one an
            # operator removed to revoke what it issued let in a client
            # that sent it (attacker round 38).
            foreign = self._foreignCA(verified)
            if foreign is not None:
                return (
                    f"was verified through a CA not in --client-ca ({foreign}, "
                    "sent by the client: list every CA of its chain in "
                    "--client-ca)"
                )
            transport._verifiedFor = context
        if _over(chainEnds(transport, certificate)):
            # A CA above it has expired (attacker round 33), unless it
            # verifies now by another copy of it in --client-ca (a renewed
            # root beside the old one: late review 33).
            chain = handle.get_peer_cert_chain() or []
            verified = stillTrusted(self._clientCAs()[0], certificate, chain)
            if verified is None or _over(earliestEnd(verified)):
                return "has expired"
            transport._chainEnds = earliestEnd(verified)
        return None

    def _foreignCA(self, verified: list[Any]) -> str | None:
        """
        The subject of the first CA of a C{verified} chain (leaf first) that
        is not in C{--client-ca}, or None: a chain verifies through the
        bundle's CAs alone.
        """
        keys = self._clientCAs()[2]
        for authority in verified[1:]:
            certificate = authority.to_cryptography()
            if publicKeySHA256(certificate) not in keys:
                return str(certificate.subject.rfc4514_string())[:200]
        return None

    def _clientCAs(self) -> tuple[Any, dict[str, Any], frozenset[str]]:
        """
        The client CAs in force: as a store, by their keys' SHA-256, and
        those keys' SHA-256 alone (read once per reload).
        """
        context = self.getContext()
        if self._authorities is None or self._authorities[0] is not context:
            path = self._config["client-ca"]
            keys = clientCAKeys(path)
            self._authorities = (
                context,
                clientAuthorities(path),
                keys,
                frozenset(keys),
            )
        return self._authorities[1:]  # type: ignore[no-any-return]

    def trustedCAs(self) -> frozenset[str]:
        """The keys' SHA-256 of the client CAs in force (none: no --client-ca)."""
        if self._config["client-ca"] is None:
            return frozenset()
        return self._clientCAs()[2]

    def certificateCA(self, transport: Any, certificate: Any) -> str | None:
        """
        Which client CA in force the client C{certificate} (of the connection
        C{transport}) chains to: its key's SHA-256, or None.

        @raise Forbidden: it was verified through more CAs of the bundle
            than a token names (L{MAX_CHAIN_CAS}).
        """
        if self._config["client-ca"] is None:
            return None
        handle = transport.getHandle()
        authorities = self._clientCAs()[1]
        # Every CA of the bundle the handshake verified it through, the root
        # too: tied to the first up the chain, an intermediate, a token
        # outlived the root's removal, which refused the certificate itself
        # (auth review 37); tied to the root alone, the intermediate's
        # (late review 37). Listed by commas; past MAX_CHAIN_CAS none: kept
        # to the nearest the root, a token outlived the removal of the
        # lowest, which refused the certificate (session 38).
        verified = handle.get_verified_chain() or []
        keys = [publicKeySHA256(c.to_cryptography()) for c in verified[1:]]
        kept = [key for key in keys if key in authorities]
        if len(kept) < len(keys):
            return None  # (through a CA the client sent: certificateProblem)
        if len(kept) > MAX_CHAIN_CAS:
            raise Forbidden(
                f"the client certificate was verified through {len(kept)} CAs of "
                f"--client-ca, more than a token can name ({MAX_CHAIN_CAS}): no "
                "token for it (use the certificate)"
            )
        if kept:
            return ",".join(kept)
        chain = handle.get_peer_cert_chain() or []
        return issuingCA(
            certificate.to_cryptography(),
            [c.to_cryptography() for c in chain],
            authorities,
        )

    def reload(self) -> None:
        """Read the files again (SIGHUP); keep the options served on failure."""
        try:
            options = _options(self._config, reloading=True)
            options.getContext()  # (the key given to OpenSSL now)
            options, authorities = _throughTheBundleOnly(
                options, self._config["client-ca"]
            )
        except Exception as e:
            error = str(e) if isinstance(e, StartupError) else repr(e)
            log.error(
                "SIGHUP: TLS certificate not reloaded, the one served is kept: {error}",
                error=error,
            )
            self._reloads.failed("certificate", error)
            self._reloadClientCAs()
            return
        self._options, self._authorities = options, authorities
        self._reloads.certificateDates = _dates(options)
        self._reloads.caDates = _ownCADates(self._config)
        self._reloads.succeeded("certificate")
        if self._config["client-ca"] is not None:
            self._reloads.succeeded("client_ca")
        log.info(
            "SIGHUP: TLS certificate reloaded from {cert}: new connections get it",
            cert=self._config["cert"] or "the state dir",
        )

    def _reloadClientCAs(self) -> None:
        """
        The certificate served, with the client CAs of C{--client-ca} now:
        one removed there stayed trusted, its certificates and tokens in
        use, when the same SIGHUP could not reload the certificate (a
        renewal half written), and the log named the certificate alone
        (operator round 38).
        """
        path = self._config["client-ca"]
        if path is None:
            return
        try:
            _clientCA(self._config)
            options = withClientCAs(
                self._options, path, bool(self._config["require-client-cert"])
            )
            options, authorities = _throughTheBundleOnly(options, path)
        except Exception as e:
            error = str(e) if isinstance(e, (StartupError, TLSConfigError)) else repr(e)
            log.error(
                "SIGHUP: the client CAs of {path} were not reloaded either: "
                "certificates of a CA removed there are still accepted: {error}",
                path=path,
                error=error,
            )
            self._reloads.failed("client_ca", error)
            return
        self._options, self._authorities = options, authorities
        self._reloads.succeeded("client_ca")
        log.info(
            "SIGHUP: client CAs reloaded from {path}, with the certificate served",
            path=path,
        )


def _handshakesCounted(options: Any) -> Any:
    """C{options}, whose connections count their handshakes (KeyUpdates:
    L{countHandshakes})."""
    options.getContext().set_info_callback(countHandshakes)
    return options


def _throughTheBundleOnly(options: Any, clientCAPath: str | None) -> tuple[Any, Any]:
    """
    The C{options}, whose handshake refuses a client chain through a CA
    that is not in C{clientCAPath}: OpenSSL takes the intermediates a client
    sends, and one an operator removed to revoke what it issued let its
    holder through the handshake (under C{--require-client-cert}, then in
    with a password: session review 38). (L{ServedTLS.certificateProblem}
    holds a connection made before a reload to the bundle of now.)

    Their connections count their handshakes, too (L{_handshakesCounted}).

    @return: the options, and their client CAs (L{ServedTLS._authorities}).
    """
    _handshakesCounted(options)
    if clientCAPath is None:
        return options, None
    context = options.getContext()
    byKey = clientCAKeys(clientCAPath)
    keys = frozenset(byKey)
    authorities = (context, clientAuthorities(clientCAPath), byKey, keys)

    def verify(
        connection: Any, certificate: Any, error: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            return False
        if depth == 0:
            return True
        try:
            authority = certificate.to_cryptography()
            trusted = publicKeySHA256(authority) in keys
        except Exception:
            return False  # (a CA it cannot read is none of the bundle's)
        if not trusted:
            _saySparsely(authority.subject.rfc4514_string()[:200])
        return trusted

    context.set_verify(context.get_verify_mode(), verify)
    return options, authorities


#: When each CA a handshake refused was last said (L{_saySparsely}).
_refusedSaid: dict[str, float] = {}


def _saySparsely(subject: str) -> None:
    """
    Say, once a minute a CA, that a handshake was refused for a chain
    through C{subject}, a CA not in --client-ca: the client gets OpenSSL's
    "internal error" alert alone, and the server said nothing (verifier 38).
    """
    now = time.monotonic()
    if now - _refusedSaid.get(subject, -60.0) < 60.0:
        return
    if len(_refusedSaid) > 100:
        _refusedSaid.clear()
    _refusedSaid[subject] = now
    log.warn(
        "a client certificate was refused in the handshake: its chain goes "
        "through {ca}, which is not in --client-ca (sent by the client: "
        "removed from the bundle?)",
        ca=subject,
    )


def tlsOptions(config: Options, reloads: Reloads | None = None) -> ServedTLS:
    """
    TLS 1.3 options, reloadable (L{ServedTLS}, telling C{reloads}); the
    development certificate only on loopback; without C{--cert} and
    C{--key}, the server's own (made on first start).
    """
    return ServedTLS(config, reloads)


def _ownCADates(config: Options) -> tuple[datetime, datetime] | None:
    """When the server's own CA is valid (L{Reloads.caProblem} is asked at
    each C{/healthz}: a CA that came into its dates, or went out of them,
    while the server ran was said as it was at the start: session review
    40); None with C{--cert} (the operator's own CA)."""
    if config["cert"] is not None:
        return None
    try:
        with open(os.path.join(config["state-dir"], "tls", "ca.pem"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None
    return ca.not_valid_before_utc, ca.not_valid_after_utc


def _dates(options: Any) -> tuple[datetime, datetime] | None:
    """When the certificate C{options} serve is valid."""
    certificate = getattr(options, "certificate", None)
    if certificate is None:
        return None
    if hasattr(certificate, "to_cryptography"):  # (pyOpenSSL's X509)
        certificate = certificate.to_cryptography()
    return certificate.not_valid_before_utc, certificate.not_valid_after_utc


def _options(config: Options, reloading: bool) -> Any:
    """
    L{tlsOptions}, once: C{CertificateOptions}, or a start-up error. A
    reload refuses what a start serves with an error line (a certificate
    out of date: the one served may not be), and makes no new CA.
    """
    cert: str | None = config["cert"]
    key: str | None = config["key"]
    if cert is None and key is None:
        cert, key = _ownCertificate(config, makeCA=not reloading)
    elif cert is None or key is None:
        fatal("--cert and --key go together: give both, or neither")
    try:
        tlsOptions = serverOptions(
            cert,
            key,
            config["client-ca"],
            bool(config["require-client-cert"]),
        )
    except TLSConfigError as e:
        fatal(str(e))
    if not isDevelopmentCertificate(cert):  # (public, and said below)
        secretFile(key, "the TLS private key")
    if config["client-ca"] is not None:
        _clientCA(config)
    problem = validityProblem(cert)
    if problem is not None and reloading:
        fatal(f"the certificate {cert} {problem}")
    if problem is not None:
        # Served all the same (a clock may be wrong here, not on clients),
        # but every client that checks it refuses the handshake.
        log.error(
            "the server's certificate {cert} {problem}: clients refuse it "
            "(jw: 'certificate has expired'); give a valid --cert and --key "
            "and restart, or check this machine's clock",
            cert=cert,
            problem=problem,
        )
    # The development key and users are public: fine on loopback (with a
    # warning), never where another host can reach them.
    if isDevelopmentCertificate(cert):  # wherever it was copied to
        if not isLoopback(config["interface"]):
            fatal(
                "the DEVELOPMENT certificate (its key, certs/server.key, is "
                f"public) must not serve {where(config)}: give --cert and "
                "--key of your own"
            )
        log.warn(
            "running with the bundled DEVELOPMENT certificate and key "
            "(certs/server.key is public): use --cert/--key in production"
        )
    return tlsOptions


def _clientCA(config: Options) -> None:
    """
    The client CAs vouch for users: whoever may rewrite the file, or sign
    with a CA in it, may log in as anyone. Refused when others may write it
    (as the users file), and when it holds the development CA (its key,
    certs/ca.key, is public) anywhere but on loopback with the development
    users, whose passwords are public too (it was taken, off loopback and
    with a real users file: anyone became any user, Admin too: attacker
    round 29).
    """
    path = config["client-ca"]
    if not holdsDevelopmentCA(path):
        # (Read by anyone is no matter: only who may write it.)
        secretFileProblem(path, "the client CA file --client-ca")
        return
    # The development CA's key is public already: who may write the file
    # is no matter (as for the development certificate's key).
    if config["users"] is not None or not isLoopback(config["interface"]):
        fatal(
            f"--client-ca {ascii(path)[1:-1]} holds the DEVELOPMENT CA (its key, "
            "certs/ca.key, is public: anyone may sign a certificate for any "
            "user): it is only for the development users on loopback; give a "
            "CA of your own"
        )
    log.warn(
        "--client-ca holds the DEVELOPMENT CA (certs/ca.key is public): anyone "
        "here may log in as any development user with a certificate"
    )


def _ownCertificate(config: Options, makeCA: bool = True) -> tuple[str, str]:
    """
    Use the server's own CA and certificate (made if absent, the CA only if
    C{makeCA}): see selfcert.
    """
    hosts = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    interface = config["interface"]
    if interface and not _isWildcard(interface) and interface not in hosts:
        hosts.append(interface)
    folder = os.path.join(config["state-dir"], "tls")
    try:
        own = ensureServerCertificate(folder, hosts, makeCA)
    except SelfCertError as e:
        fatal(str(e))
    if own.caProblem is not None:
        log.error("{problem}", problem=own.caProblem)
    # jw finds only the CA of the default state dir (its user's own).
    found = os.path.realpath(config["state-dir"]) == os.path.realpath(defaultStateDir())
    log.info(
        "TLS: the server's own certificate for {hosts}, by its CA {ca} "
        "(SHA-256 {fingerprint}){made}: {finding}",
        hosts=", ".join(hosts),
        ca=own.ca,
        fingerprint=own.fingerprint,
        made=" (made now)" if own.made else "",
        finding=(
            "jw run by this user on this machine finds it; elsewhere give jw "
            "--ca with a copy, or trust it at jw login"
            if found
            else f"give jw --ca {own.ca} (or JW_CA), or a copy of it elsewhere, "
            "or trust it at jw login: jw finds by itself only the CA of the "
            "default state dir"
        ),
    )
    return own.cert, own.key


def _isWildcard(interface: str) -> bool:
    """Whether C{interface} means every address (no name to certify)."""
    try:
        return ipaddress.ip_address(interface).is_unspecified
    except ValueError:
        return False


def where(config: Options) -> str:
    return f"--interface {config['interface'] or '(every interface)'}"
