"""What every `irgate` command shares: the help format, the connection flags and deadlines, the exit
codes, and how results and messages are printed (tables on stdout, messages on stderr)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)

DEFAULT_MODELS = Path("models")
DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 120.0
# One default for the reasoning budget everywhere: unset, so the server applies its cap.
REASONING_HELP = "reasoning tokens per judged document (default: the server's cap, see `irgate info`)"
# Never shown as a default in --help: they come from the environment.
SECRETS = {"api_key"}

# Exit codes: a script tells a "no" from a mistake, a refusal and a server it cannot reach.
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NO_ANSWER = 4
EXIT_NOT_STARTED = 5
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    0: "done",
    EXIT_NO: "the answer is no: `health` is not SERVING, `documents get` found not every id, `collection check` "
             "found problems",
    EXIT_USAGE: "a wrong command line, setting or input file",
    EXIT_REFUSED: "the server refused the call (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, "
                  "UNAUTHENTICATED, RESOURCE_EXHAUSTED, DATA_LOSS, ...: the message names the code)",
    EXIT_NO_ANSWER: "no answer: the server cannot be reached or is unavailable (UNAVAILABLE), or the deadline "
                    "passed (DEADLINE_EXCEEDED); retry, or give more --timeout",
    EXIT_NOT_STARTED: "`irgate serve` could not start (its port or --data-dir is taken, Milvus cannot be reached)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag shows its default (secrets excepted); a description or epilog keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # An indented line ("  3    the server refused ...") wraps under its own text: a table stays a table.
        lines = []
        for line in text.splitlines():
            hanging = re.match(r"\s+\S+\s+", line)
            lines.append(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + " " * (
                hanging.end() if hanging else 0)) if line.strip() else "")
        return "\n".join(lines)

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if (action.dest in SECRETS or action.default is argparse.SUPPRESS or not action.option_strings
                or "%(default)" in help or "default:" in help):
            return help
        if action.default in (None, "", []):
            return f"{help} (default: none)"
        if action.default is False:  # a switch
            return f"{help} (default: off)"
        return f"{help} (default: %(default)s)"


def add_command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    return parser


def add_client_options(parser: argparse.ArgumentParser, server_default: str = DEFAULT_SERVER,
                    server_help: str = "HOST:PORT of a running irgate (env IRGATE_SERVER)") -> None:
    """The same connection flags on every command that talks to a server."""
    parser.add_argument("--server", default=os.environ.get("IRGATE_SERVER", server_default), help=server_help)
    parser.add_argument("--api-key", default=os.environ.get("IRGATE_API_KEY", ""),
                        help="API key, sent as 'authorization: Bearer KEY' (env IRGATE_API_KEY; default: none)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CA roots")
    parser.add_argument("--ca-cert", type=Path, default=os.environ.get("IRGATE_CA_CERT") or None,
                        help="PEM CA certificate to trust instead of the system roots; implies --tls (env IRGATE_CA_CERT)")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"deadline of each call in seconds, 0 for none (default: {DEFAULT_TIMEOUT_S:g}; "
                             "`index` has none unless given one, then it applies to each batch)")


def call_timeout(args: argparse.Namespace, bulk: bool = False) -> float | None:
    """--timeout in seconds, None for no deadline: 0 asks for none, and a bulk call has none by default."""
    if args.timeout is None:
        return None if bulk else DEFAULT_TIMEOUT_S
    if args.timeout < 0:
        raise ValueError(f"--timeout is {args.timeout:g}; give seconds, or 0 for no deadline")
    return args.timeout or None



def root_certificates(args: argparse.Namespace) -> bytes | None:
    return Path(args.ca_cert).read_bytes() if args.ca_cert else None



def print_table(table: Table) -> None:
    # A pipe or a file has no width of its own: 80 columns would cut the tables short.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def say(message: str) -> None:
    """A status line on stderr, unwrapped and printed as is (it may hold brackets)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """An error on stderr, unwrapped: a log or a grep finds it on one line whatever the terminal."""
    console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
