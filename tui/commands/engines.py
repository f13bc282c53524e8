"""`codebench-tui engines`: every engine, whether it can run here, and how to install it if not."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engines", help="list engines, their options and availability")
    p.add_argument("--device", default="auto", help="check availability for this device (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from engines import registry
    from engines.measure.hardware import resolve_device
    from engines.study.schema import EngineRun
    from store.safe import LINE, shown

    device = resolve_device(args.device)
    table = Table(title=f"engines (device {device})", title_justify="left", header_style="bold")
    for col in ("engine", "options", "available", "what it is"):
        table.add_column(col)
    for info in registry.ENGINES.values():
        avail = registry.check(EngineRun(engine=info.name), device)
        options = "; ".join(f"{axis}: {','.join(vals)}" for axis, vals in info.axes.items())
        # A reason may quote an import error: Text, never markup.
        state = (Text("yes", style="green") if avail.ok
                 else Text(f"no: {shown(avail.reason, LINE)}\n{shown(avail.hint, LINE)}", style="dim"))  # fmt: skip
        table.add_row(Text(info.name), Text(options), state, Text(info.summary))
    Console().print(table)
    return 0
