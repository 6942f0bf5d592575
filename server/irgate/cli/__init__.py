"""The `irgate` command: serve, prepare models, manage collections and documents, index, embed, search, judge, evaluate.

irgate.cli.shared holds what every command shares (connection flags, help format, exit codes,
output), irgate.cli.commands the commands but `eval`, irgate.cli.evaluate the evaluation suites;
this module puts them under one parser and turns failures into exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys

# gRPC's C core would print its own lines (a failed TLS handshake, ...) among the CLI's messages, which
# report every failure themselves. The core reads this once, when grpc is imported; GRPC_VERBOSITY set
# by the user still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402

from irgate import __version__  # noqa: E402
from irgate.cli import commands, evaluate  # noqa: E402
from irgate.cli.shared import (  # noqa: E402
    DEFAULT_SERVER,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_NO_ANSWER,
    EXIT_NOT_STARTED,
    EXIT_REFUSED,
    EXIT_USAGE,
    NO_ANSWER,
    HelpFormatter,
    call_timeout,
    print_error,
    say,
)
from irgate.cli.shared import EXIT_NO as EXIT_NO  # noqa: E402
from irgate.cli.shared import SECRETS as SECRETS  # noqa: E402
from irgate.errors import ConfigError, StartupError  # noqa: E402
from irgate.errors import IrgateError as ServerSideError  # noqa: E402
from irgate_client import IrgateError  # noqa: E402

COMMANDS = {**commands.COMMANDS, "eval": evaluate.run_eval}


def build_parser() -> argparse.ArgumentParser:
    exit_codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(prog="irgate", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                     epilog=f"exit codes:\n{exit_codes}\n\nIRGATE_SERVER (HOST:PORT) is every client "
                                            f"command's --server default ({DEFAULT_SERVER} when unset).")
    parser.add_argument("--version", action="version", version=f"irgate {__version__}", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_commands(subparsers)
    evaluate.add_eval_commands(subparsers)
    return parser


def _explained(error: IrgateError, args: argparse.Namespace) -> str:
    """The server's message, with what a CLI user can do about the common failures."""
    server = getattr(args, "server", "")
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and error.message.startswith("Deadline Exceeded"):
        return (f"DEADLINE_EXCEEDED: no answer within --timeout {call_timeout(args) or 0:g} s; "
                "give the call more time with --timeout SECONDS, or --timeout 0 for no deadline")
    if error.code == grpc.StatusCode.UNAVAILABLE and server and "handshake" in error.message.lower():
        return (f"UNAVAILABLE: no TLS handshake with {server}: with --tls (or --ca-cert) the server must serve TLS "
                "(`irgate serve --tls-cert ... --tls-key ...`); drop --tls for a plaintext server, or check the certificate "
                f"({error.message})")
    if error.code == grpc.StatusCode.UNAVAILABLE and server:
        return f"{error}\ncannot reach irgate at {server}: is `irgate serve` running there? (set --server or IRGATE_SERVER)"
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{error}\nthe server wants an API key: give --api-key or set IRGATE_API_KEY"
    return str(error)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    # The user's to fix (a status from the server, a bad file or argument, a setting): no traceback.
    except IrgateError as error:
        print_error(_explained(error, args))
        sys.exit(EXIT_NO_ANSWER if error.code in NO_ANSWER else EXIT_REFUSED)
    except (ServerSideError, ConfigError, OSError, ValueError) as error:
        print_error(str(error))
        sys.exit(EXIT_USAGE)
    except StartupError as error:
        print_error(str(error))
        sys.exit(EXIT_NOT_STARTED)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(EXIT_INTERRUPTED)
