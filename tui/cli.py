"""The `codebench-tui` command line. Bad input: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import sqlite3
import sys
from typing import Sequence

from tui.errors import UsageError  # noqa: F401 - re-exported for the commands
from tui.parsing import EXIT_USAGE, PROG, Parser, add_commands, add_db

COMMANDS = ("run", "eval", "check", "history", "noise", "crosscheck", "verdict", "engines", "microbench", "models",
            "probe", "memory")  # modules in tui.commands; each registers its parsers


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Benchmark code-LLM inference stacks on your hardware.")
    parser.add_argument("--replay", metavar="RUN", help="re-render a stored run (an id, id prefix or 'last')")
    parser.add_argument("--headless", action="store_true", help="with --replay: print instead of opening the dashboard")
    add_db(parser)
    add_commands(parser, COMMANDS)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from engines.base import SpecError
    from engines.study.grid import GridError
    from store.db import StoreError
    from store.export import ImportError_
    from store.queries import RunNotFound

    return (UsageError, SpecError, GridError, StoreError, RunNotFound, ImportError_)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            if args.replay is not None:
                from tui.commands.history import replay

                return replay(args)
            from tui.commands.run import open_dashboard

            return open_dashboard(args)
        return args.func(args)
    except _known_errors() as exc:
        from store.safe import first_line

        msg = first_line(str(exc).strip(), 2000) if str(exc).strip() else type(exc).__name__  # echoes input: shown
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `codebench-tui runs | head`
        return 0
    except Exception as exc:  # the database under us: full, locked, gone
        from sqlalchemy.exc import DBAPIError

        if not isinstance(exc, (DBAPIError, sqlite3.Error)):
            raise
        from store.db import default_db_path, failure

        print(f"{PROG}: error: {failure(getattr(args, 'db', None) or default_db_path(), exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
