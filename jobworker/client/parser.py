"""C{jw}'s command line: its verbs, their options, and help that fits a screen."""

from __future__ import annotations

import argparse
import difflib
import functools
import re
from typing import Any, NoReturn

from .. import __version__
from .config import DEFAULT_SERVER
from .failures import EXIT_ALREADY_ENDED, ArgumentsRefused, HelpShown
from .streams import Streams

#: The per-job Slurm options of C{jw exec} (the request's C{"slurm"}).
SLURM_TEXTS = ("partition", "account", "qos", "gres", "constraint")
SLURM_COUNTS = ("nodes", "ntasks")

#: The job states, for C{--status} (and completion).
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED")
#: Those C{jw clean --status} takes: a job that has not ended is not cleaned.
CLEAN_STATUSES = STATUSES[2:]

#: The verbs, in the order help lists them (completion reads this too).
VERBS = (
    "exec",
    "list",
    "status",
    "logs",
    "wait",
    "stop",
    "rm",
    "clean",
    "drain",
    "login",
    "logout",
    "config",
    "completion",
)

#: The verbs other tools (ssh, docker, kubectl, a shell) use for jw's:
#: suggested for them (C{jw ls} was steered to C{logs}, C{jw kill} to
#: nothing: new user round 37).
SYNONYMS = {
    "ls": "list",
    "ps": "list",
    "kill": "stop",
    "run": "exec",
    "start": "exec",
    "delete": "rm",
    "remove": "rm",
    "tail": "logs",
    "cat": "logs",
    "log": "logs",
    "show": "status",
    "inspect": "status",
}


def suggestedVerb(typed: str) -> str | None:
    """The verb jw suggests for an unknown C{typed} one, if any."""
    if typed in SYNONYMS:
        return SYNONYMS[typed]
    close = difflib.get_close_matches(typed, VERBS, n=1)
    return close[0] if close else None


EXAMPLES = """\
examples:
  jw exec -f -- make test          run, stream output, exit with its status
  jw exec --name nightly -- ./build.sh
  jw list --status RUNNING         jw status 5c08db  (any unique id prefix)
  jw logs -f 5c08db                jw stop --kill 5c08db
  jw clean --older-than 7d         delete ended jobs older than a week: yours
                                   (an Admin's: every user's, unless --owner)

Settings: jw config --help. Every command: jw COMMAND --help.
"""

SETTINGS = """\
settings (flags override the environment, which overrides the config file):
  --server / JW_SERVER / server      default https://localhost:8443
  --ca / JW_CA / ca                  default: the CA trusted at jw login;
                                     for localhost, 127.0.0.1 and ::1, else
                                     the CA of this user's server here (jw
                                     config: which; never the development CA)
  --cert, --key / JW_CERT, JW_KEY / cert, key
                                     a client certificate (no password asked)
  JW_USER / user, JW_PASSWORD        credentials (else a token saved by
                                     jw login, else prompted on the terminal)
  JW_TOKEN                           a bearer token to use (CI: from POST
                                     /tokens); no password, nothing saved
  JW_KEEPALIVE / keepalive           seconds of silence before TCP keepalive
                                     probes (1-32767, default 30)
  config file: $XDG_CONFIG_HOME/jobworker/config.toml (~/.config/...), e.g.
    server = "https://jobs.example.com:8443"
    ca = "ca.pem"      # relative to the config file
    user = "alice"
"""

#: A duration, as every flag of jw that takes one reads it (the units
#: C{jw clean --older-than} always took; the server's duration options take
#: them too): a number, then s, m, h, d or w (none: seconds).
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)([smhdw]?)\s*")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_EXAMPLES = "90s, 30m, 12h, 7d, 2w"


def _durationOf(text: str, noun: str) -> float:
    match = _DURATION.fullmatch(text)
    if match is None:
        # argparse puts "argument --flag: " before it.
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {noun} like {DURATION_EXAMPLES} or 600 (seconds)"
        )
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def duration(text: str) -> float:
    """C{90s}, C{30m}, C{12h}, C{7d}, C{2w} or plain seconds (C{2.5}) -> seconds."""
    return _durationOf(text, "a duration")


def stopSignal(text: str) -> str:
    """A signal a stop may begin with (the server's list), as typed."""
    from ..jobs.stopping import STOP_SIGNALS  # (only when given: jw starts fast)

    if text.upper().removeprefix("SIG") not in STOP_SIGNALS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(STOP_SIGNALS)}"
        )
    return text


def age(text: str) -> str:
    """
    An age (C{--older-than}), checked as a L{duration} is, kept as typed:
    C{jw clean} reads it (L{parseAge<jobworker.client.verbs.parseAge>}).
    """
    _durationOf(text, "an age")
    return text


def _isNumber(word: str) -> bool:
    """A negative number (C{--priority -5}) is a value, not an option."""
    try:
        float(word)
    except ValueError:
        return False
    return True


_INVALID_CHOICE = re.compile(r"argument COMMAND: invalid choice: '([^']*)'")


class _Parser(argparse.ArgumentParser):
    """An argument parser that writes to L{Streams} and raises, never exits."""

    def __init__(self, *args: Any, streams: Streams, **kwargs: Any) -> None:
        # Whole option names only: "--serv" taken for --server silently
        # would make every future option that shares a prefix a break.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._streams = streams
        self._words: list[str] = []

    def unknownOption(self, words: list[str]) -> str | None:
        """
        The first of C{words} (before a C{--}) that looks like an option
        this parser does not take, with a did-you-mean; None if none.
        """
        for word in words:
            if word == "--":
                return None
            name = word.split("=", 1)[0]
            if word.startswith("-") and word != "-" and not _isNumber(word):
                if name not in self._option_string_actions:
                    known = [o for o in self._option_string_actions if o[:2] == "--"]
                    close = difflib.get_close_matches(name, known, 1, 0.75)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    return f"unknown option {name}{hint}"
        return None

    def secondId(self, extras: list[str]) -> str | None:
        """
        What is wrong with C{extras}, words left over by a verb that takes
        one ID: a second one (it was "unrecognized arguments": new user
        round 39). None: another mistake.
        """
        positionals = [a for a in self._actions if not a.option_strings]
        if [a.dest for a in positionals] != ["id"] or positionals[0].nargs:
            return None
        return f"{self.prog} takes one ID: {extras[0]!r} is a second one"

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            self._streams.show(message)

    def parse_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> argparse.Namespace:
        parsed: argparse.Namespace
        args = _helpVerb(list(args or []))
        self._words = args
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # Found by the top parser, but the verb's help is the one to read,
            # unless the word came before the verb (one of jw's own options).
            verb = getattr(parsed, "verb", None)
            words = self._words
            beforeVerb = verb in words and extras[0] in words[: words.index(verb)]
            if verb and not beforeVerb:
                where, owner = f"{self.prog} {verb}", self._verbParser(verb) or self
            else:
                where, owner = self.prog, self
            unknown = owner.unknownOption(extras)
            ofVerb = self._verbParser(verb) if beforeVerb else None
            name = extras[0].split("=", 1)[0]
            if ofVerb is not None and name in ofVerb._option_string_actions:
                # (jw --json list: "unknown option --json", new user round 32.)
                unknown = f"{name} is an option of {self.prog} {verb}: after it"
                where = f"{self.prog} {verb}"
            elif (
                verb
                and not beforeVerb
                and name in self._option_string_actions
                and name not in owner._option_string_actions
            ):
                # (jw exec -q: jw's own, before the command.)
                unknown = f"{name} is an option of {self.prog}: before {verb}"
                where = self.prog
            what = (
                unknown
                or owner.secondId(extras)
                or f"unrecognized arguments: {' '.join(extras)}"
            )
            raise ArgumentsRefused(f"jw: {what} (see {where} --help)")
        return parsed

    def _verbParser(self, verb: str | None) -> _Parser | None:
        """The parser of C{verb}'s own options, if it is one of ours."""
        if verb is None or self._subparsers is None:
            return None
        for action in self._subparsers._group_actions:
            if isinstance(action, argparse._SubParsersAction):
                found = action.choices.get(verb)
                return found if isinstance(found, _Parser) else None
        return None

    def error(self, message: str) -> NoReturn:
        # One line, as every other failure: no usage before it (the help
        # is one flag away, and says so).
        unknown = _INVALID_CHOICE.search(message)
        if unknown:
            # "jw --sever URL list": the URL was taken for the command, but
            # the mistake is the option before it.
            words = self._words
            before = (
                words[: words.index(unknown.group(1))]
                if unknown.group(1) in words
                else []
            )
            option = self.unknownOption(before)
            if option is not None:
                raise ArgumentsRefused(f"jw: {option} (see jw --help)")
            close = suggestedVerb(unknown.group(1))
            hint = f"; did you mean {close!r}?" if close else ""
            raise ArgumentsRefused(
                f"jw: unknown command {unknown.group(1)!r}{hint} (see jw --help)"
            )
        if "required" in message and not any(w in VERBS for w in self._words):
            # "jw --bogus": no command, because of the option, which is the
            # mistake to name (new user round 29).
            option = self.unknownOption(self._words)
            if option is not None:
                raise ArgumentsRefused(f"jw: {option} (see jw --help)")
        line = " ".join(message.split())
        raise ArgumentsRefused(f"jw: {line} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status == 0:
            raise HelpShown()
        raise ArgumentsRefused((message or "").rstrip("\n"))


def _helpVerb(words: list[str]) -> list[str]:
    """
    C{jw help} as C{jw --help}, C{jw help VERB} as C{jw VERB --help}, as
    git's and docker's (it was an unknown command: new user round 39).
    """
    if words[:1] != ["help"]:
        return words
    return [*words[1:2], "--help"]


def _globalOptions(streams: Streams) -> argparse.ArgumentParser:
    """The options every verb takes, before or after it."""
    options = _Parser(add_help=False, streams=streams)
    flag = functools.partial(options.add_argument, default=argparse.SUPPRESS)
    flag("--server", help=f"server URL (env JW_SERVER, default {DEFAULT_SERVER})")
    flag("--ca", help="CA certificate that signs the server's (env JW_CA)")
    flag("--cert", help="client certificate (PEM) to log in with (env JW_CERT)")
    flag("--key", help="its private key (PEM) (env JW_KEY)")
    return options


def buildParser(streams: Streams) -> argparse.ArgumentParser:
    """The C{jw} argument parser, with its subcommands; it writes to C{streams}."""
    shared = _globalOptions(streams)
    parser = _Parser(
        streams=streams,
        prog="jw",
        description="Run and watch jobs on a jobworker server.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared],
    )
    parser.add_argument("--version", action="version", version=f"jw {__version__}")
    # jw's own, before the command (jw -q exec ...), as git's -C; cron
    # mails any output, and 2>/dev/null hid the errors too (new user round
    # 41).
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only errors and warnings on stderr (cron)",
    )
    asJSON = _Parser(add_help=False, streams=streams)
    asJSON.add_argument(
        "--json", action="store_true", help="print the API's JSON (one document)"
    )
    commands = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def command(name: str, *, json: bool = True, **kwargs: Any) -> Any:
        parents: list[Any] = [shared, asJSON] if json else [shared]
        return commands.add_parser(
            name,
            streams=streams,
            parents=parents,
            formatter_class=_HelpFormatter,
            **kwargs,
        )

    _execOptions(command)
    listing = command(
        "list",
        help="list jobs, newest first",
        epilog="example: jw list --status FAILED --owner alice --all",
    )
    # (Each filter is taken once: collected, so that a second is refused,
    # by checkArguments, not silently kept in the first's place.)
    listing.add_argument("--status", type=str.upper, choices=STATUSES, action="append")
    listing.add_argument("--owner", help="only this user's jobs", action="append")
    listing.add_argument("--name", help="only jobs of this name", action="append")
    listing.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="with this label"
    )
    listing.add_argument(
        "--limit", type=int, default=100, help="jobs per page (1-1000, default 100)"
    )
    listing.add_argument("--all", action="store_true", help="every page, not just one")
    listing.add_argument(
        "--cursor",
        help="start after this page (the next_cursor of a --json page)",
    )
    listing.add_argument(
        "--wide", "-w", action="store_true", help="whole ids and commands"
    )
    status = command(
        "status",
        help="show a job (or several)",
        description="Show each job's record, in the order of the IDs (with "
        "--json: one document, a list if more than one ID). Exit 1 if any ID "
        "failed (not found, ambiguous: one line each, after the records).",
        epilog="example: jw status 5c08db 9f2e41",
    )
    status.add_argument("ids", nargs="+", metavar="ID")
    _logsOptions(command)
    wait = command(
        "wait",
        help="wait until a job ends; exit with its exit status",
        description="Wait for the job to end and exit with its exit status "
        "(128+N if killed by signal N, 127 if it could not start); exit 124 "
        "if --timeout passes first, 130 on Ctrl-C.",
        epilog="example: jw wait --timeout 600 $ID && echo passed",
    )
    wait.add_argument(
        "--timeout",
        type=duration,
        metavar="S",
        help=f"give up after S seconds (or {DURATION_EXAMPLES})",
    )
    wait.add_argument("id", metavar="ID")
    stop = command(
        "stop",
        help="stop jobs (TERM, then KILL after the grace)",
        description="Send each job's whole process tree SIGTERM (or --signal), "
        "then SIGKILL after the grace period; print the records once they "
        "ended, in the order of the IDs (several are stopped at once; with "
        "--json: one document, a list if more than one ID). "
        f"Exit {EXIT_ALREADY_ENDED} if the job had already ended, or one of "
        "them (nothing to stop; --json still prints its record); 1 if an ID "
        "failed otherwise (one line each, after the records).",
        epilog="example: jw stop --signal INT --grace 30 $ID",
    )
    stop.add_argument(
        "--signal",
        "-s",
        type=stopSignal,
        metavar="NAME",
        help="first signal (TERM; or INT, HUP, QUIT, USR1, USR2, ALRM, KILL)",
    )
    stop.add_argument(
        "--grace",
        type=duration,
        metavar="S",
        help="seconds before KILL, at most 3600 (or 90s, 30m, 1h)",
    )
    stop.add_argument("--kill", action="store_true", help="KILL at once")
    stop.add_argument("ids", nargs="+", metavar="ID")
    remove = command(
        "rm",
        json=False,
        help="delete ended jobs and their output",
        epilog="example: jw rm $A $B",
    )
    remove.add_argument("ids", nargs="+", metavar="ID")
    clean = command(
        "clean",
        help="delete ended jobs in one request",
        description="Delete your ended jobs; an Admin's: every user's ended "
        "jobs, unless --owner names one user. With --status or --older-than, "
        "only those of that status or ended longer ago. Nothing asks first.",
        epilog="example: jw clean --status COMPLETED --older-than 7d",
    )
    clean.add_argument(
        "--status", type=str.upper, choices=CLEAN_STATUSES, action="append"
    )
    clean.add_argument("--owner", help="only this user's jobs", action="append")
    clean.add_argument(
        "--older-than",
        type=age,
        metavar="AGE",
        help=f"e.g. {DURATION_EXAMPLES} (plain: seconds)",
    )
    drain = command(
        "drain",
        help="take no new job, let the running ones end (Admins)",
        description="Drain the server (POST /drain): it takes no new job and "
        "starts no queued one, while the running ones go on to their end; then "
        "it may be restarted without stopping any (queued jobs stay queued, "
        "for the restarted server). Print the drain's state. --wait waits "
        "until no job runs (exit 1 if the drain is ended meanwhile; Ctrl-C "
        "stops waiting, exit 130: the drain goes on). A restart, or --end, "
        "ends the drain. Admins only.",
        epilog="example: jw drain --wait && sudo systemctl restart jobworker",
    )
    drain.add_argument(
        "--wait", action="store_true", help="drain, then wait until no job runs"
    )
    drain.add_argument(
        "--status", action="store_true", help="only show the drain (change nothing)"
    )
    drain.add_argument(
        "--end", action="store_true", help="end the drain: queued jobs start again"
    )
    command(
        "login",
        json=False,
        help="ask the password once and keep a token for later commands",
        description="Get a bearer token from the server (POST /tokens) with "
        "your password or client certificate, and keep it in "
        "$XDG_CONFIG_HOME/jobworker/tokens.json (mode 0600). Later commands "
        "use it until it expires, then ask for the password again.",
        epilog="example: jw login && jw list",
    )
    command("logout", json=False, help="forget the token jw login kept")
    command(
        "config",
        json=False,
        help="show the settings in force and where each comes from",
        epilog=SETTINGS,
    )
    completion = command(
        "completion",
        json=False,
        help="print a shell completion script",
        epilog="example: source <(jw completion bash)",
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])
    return parser


def _execOptions(command: Any) -> None:
    execute = command(
        "exec",
        help="start a job",
        description="Start COMMAND with ARGs on the server (no shell) and print "
        "the job id. With --follow, stream its output in order and exit with "
        "its exit status (128+N if killed by signal N, 127 if it could not "
        "start); Ctrl-C stops the job (a second Ctrl-C stops following, the "
        "stop goes on; --detach-on-interrupt leaves the job running).",
        epilog="example: jw exec --env LEVEL=debug --cwd /srv -- ls -la",
    )
    add = execute.add_argument
    add(
        "--follow",
        "-f",
        action="store_true",
        help="stream output, exit with its status",
    )
    add("--stdin", "-i", action="store_true", help="send jw's stdin to the job")
    add(
        "--detach-on-interrupt",
        action="store_true",
        help="Ctrl-C leaves the job running",
    )
    add("--name", "-n", help="a name to find the job by")
    add(
        "--after",
        action="append",
        default=[],
        metavar="ID",
        help="start after ID ended",
    )
    add(
        "--after-ok",
        action="append",
        default=[],
        metavar="ID",
        help="start after ID COMPLETED (else fail without running)",
    )
    add(
        "--priority",
        type=int,
        metavar="N",
        help="queue priority (-100..100, 0; above 0: Admins only)",
    )
    add("--label", "-l", action="append", default=[], metavar="K=V", help="a label")
    add("--env", "-e", action="append", default=[], metavar="K=V", help="a variable")
    add("--cwd", help="working directory of the job")
    add(
        "--timeout",
        type=duration,
        metavar="S",
        help=f"stop it after S seconds (or {DURATION_EXAMPLES})",
    )
    add("--memory", metavar="SIZE", help="memory limit (512M, 2G)")
    add("--cpu", type=int, metavar="MILLICORES", help="CPU limit (1000 = 1 CPU)")
    add("--pids", type=int, metavar="N", help="process-count limit")
    add(
        "--io-read",
        metavar="SIZE",
        help="read bytes per second (disk; only where the server allows disk "
        "rates: --allow-io-bps; at least its --min-io-bps)",
    )
    add(
        "--io-write",
        metavar="SIZE",
        help="write bytes per second (disk; as --io-read)",
    )
    slurm = execute.add_argument_group("Slurm (--executor slurm; the server allows)")
    for name in SLURM_TEXTS:
        slurm.add_argument(f"--{name}", metavar="NAME", help=f"sbatch --{name}")
    for name in SLURM_COUNTS:
        slurm.add_argument(f"--{name}", type=int, metavar="N", help=f"sbatch --{name}")
    slurm.add_argument("--exclusive", action="store_true", help="sbatch --exclusive")
    add(
        "command",
        metavar="COMMAND [ARG ...]",
        nargs=argparse.REMAINDER,
        action=_CommandWords,
        help="what the job runs, each word as typed, a -- among them too "
        "(one -- before COMMAND ends jw's options)",
    )
    execute.set_defaults(command=None, args=[])


class _CommandWords(argparse.Action):
    """
    C{jw exec}'s command and its arguments: every word after jw's own
    options, verbatim (C{jw exec grep -- -v f} runs C{grep -- -v f}), but
    for one C{--} before the command, which ends jw's options (C{jw exec --
    make test}). Sets C{command} (None: no command) and C{args}.

    One positional taking the rest (C{REMAINDER}), not C{COMMAND} then the
    rest: argparse drops the first C{--} of what it gives a positional that
    is not the rest, so a C{--} right after the command word was lost.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        words = list(values or [])
        if words[:1] == ["--"]:
            words = words[1:]
        namespace.command = words[0] if words else None
        namespace.args = words[1:]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as written (no rewrapping); C{jw exec}'s usage ends in its
    C{COMMAND [ARG ...]}, not in argparse's bare C{...} for the rest."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, _CommandWords):
            return str(action.metavar)
        return super()._format_args(action, default_metavar)


def _logsOptions(command: Any) -> None:
    logs = command(
        "logs",
        json=False,
        help="print a job's output",
        description="Print the job's stdout to stdout and its stderr to "
        "stderr, in the order the server read them from the job's pipes. "
        "With --follow, until the job ends, then exit with its status (130 "
        "on Ctrl-C).",
        epilog="example: jw logs --follow --tail 20 $ID",
    )
    logs.add_argument("--follow", "-f", action="store_true", help="wait for more")
    logs.add_argument("--stdout", action="store_true", help="only stdout (raw)")
    logs.add_argument("--stderr", action="store_true", help="only stderr (raw)")
    logs.add_argument(
        "--offset",
        type=int,
        help="start at this byte of stdout (of stderr with --stderr): that "
        "one stream, raw",
    )
    logs.add_argument(
        "--tail",
        type=int,
        metavar="N",
        help="only the last N lines of the output (with --stdout, --stderr or "
        "--offset: of that stream; with --follow: each stream's last N, then "
        "what comes)",
    )
    logs.add_argument("id", metavar="ID")
