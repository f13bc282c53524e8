"""The command line's parser pieces, below both `tui.cli` and the command modules: a command that needs another
command's arguments (the demo and `noise` parse `run`'s) builds that command's parser here instead of importing
the CLI that imports it."""

from __future__ import annotations

import argparse
import importlib
from typing import NoReturn

from store.safe import shown

EXIT_USAGE = 2
PROG = "codebench-tui"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        # argparse quotes the user's text: its escape sequences and newlines are shown, never sent
        self.exit(EXIT_USAGE, f"{PROG}: error: {shown(message)} (see {self.prog} --help)\n")


def add_db(p: argparse.ArgumentParser, **kw) -> None:
    p.add_argument("--db", metavar="PATH", help="database file (default: the user data directory)", **kw)


def add_commands(parser: argparse.ArgumentParser, modules: tuple[str, ...]) -> None:
    """Each module of tui.commands registers its subcommands; each takes --db after its name too."""
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in modules:
        importlib.import_module(f"tui.commands.{name}").register(sub)
    for action in sub.choices.values():
        if not any(a.dest == "db" for a in action._actions):
            add_db(action, default=argparse.SUPPRESS)  # else its None would replace `codebench-tui --db X COMMAND`


def parse_command(module: str, argv: list[str]) -> argparse.Namespace:
    """argv (the command's name first) parsed by the parser of one command module alone, as the CLI would."""
    parser = Parser(prog=PROG)
    add_db(parser)
    add_commands(parser, (module,))
    return parser.parse_args(argv)
