"""C{jobworker-hash-password}: a users-file line for a password read without echo."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import NoReturn

import bcrypt

from ..jobs.identity import Identity, IdentityError
from .names import USER_NAME
from .permissions import Role

#: The longest line read from a pipe (a password is at most 72 bytes).
LONGEST_LINE = 1024

#: L{USER_NAME} in words (it said "invalid user name (see --help)", and the
#: help said nothing of names: new user round 33).
USER_NAME_RULE = "1 to 64 ASCII letters, digits or ._@- (the first a letter or digit)"


class _Parser(argparse.ArgumentParser):
    """Its refusals in one line, as jw's (no usage block before it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """
    Prompt twice for a password (or read one line from stdin when it is not a
    terminal) and print C{name:role:hash} (or the hash).
    """
    parser = _Parser(
        prog="jobworker-hash-password",
        description="Print a bcrypt hash for the users file (--users FILE).",
        epilog="example: jobworker-hash-password --user carol --role Developer "
        ">> users.txt",
    )
    parser.add_argument("--user", help="print a whole name:role:hash line")
    parser.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="the line's role, with --user (default: Developer)",
    )
    parser.add_argument(
        "--unix-user",
        metavar="ACCOUNT",
        help="the line's fourth field, with --user: the account its jobs run as",
    )
    parser.add_argument("--cost", type=int, default=12, help="bcrypt cost (10-16)")
    options = parser.parse_args(argv)
    if options.unix_user is not None:
        if options.user is None:
            parser.error("--unix-user needs --user (a bare hash has no account)")
        try:
            Identity.ofAccount(options.unix_user)
        except IdentityError as e:
            parser.error(str(e))
    if not 10 <= options.cost <= 16:
        parser.error("--cost must be between 10 and 16")
    if options.user is not None and not USER_NAME.fullmatch(options.user):
        parser.error(f"invalid user name {options.user!r}: {USER_NAME_RULE}")
    if options.role is not None and options.user is None:
        parser.error("--role needs --user (a bare hash has no role)")
    if options.role is None:
        options.role = Role.DEVELOPER.value
    try:
        if sys.stdin is None:  # closed: nothing to read a password from
            raise EOFError()
        if sys.stdin.isatty():
            try:
                password = getpass.getpass("Password: ")
                again = getpass.getpass("Again: ")
            except EOFError:  # Ctrl-D: one line, as jw's (both were exit 1)
                print(
                    "\njobworker-hash-password: no password given (end of input)",
                    file=sys.stderr,
                )
                return 2
            if again != password:
                print("jobworker-hash-password: passwords differ", file=sys.stderr)
                return 1
            encoded = password.encode("utf-8")
        else:
            # A script's pipe: one line, asked once, nothing echoed anywhere;
            # read as bytes, no more than a line may hold.
            line = sys.stdin.buffer.readline(LONGEST_LINE + 1)
            if len(line) > LONGEST_LINE:
                encoded = line  # too long: refused below, with the rest unread
            else:
                encoded = line.removesuffix(b"\n").removesuffix(b"\r")
            if not encoded:
                raise EOFError()
            encoded.decode("utf-8")
    except KeyboardInterrupt:  # Ctrl-C: after a newline, 128 + SIGINT, as jw's
        print(file=sys.stderr)
        return 130
    except EOFError:
        print("jobworker-hash-password: no password given", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print("jobworker-hash-password: the password is not UTF-8", file=sys.stderr)
        return 1
    if not encoded or len(encoded) > 72:
        print(
            "jobworker-hash-password: a password must be 1 to 72 bytes",
            file=sys.stderr,
        )
        return 1
    hashed = bcrypt.hashpw(encoded, bcrypt.gensalt(options.cost)).decode("ascii")
    account = f":{options.unix_user}" if options.unix_user is not None else ""
    print(
        f"{options.user}:{options.role}:{hashed}{account}" if options.user else hashed
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
