"""One module per CLI subcommand.

Each module defines `register(sub)` that adds its parser (with `set_defaults(func=run)`) and
`run(args) -> int`. `tui.cli` lists the modules in COMMANDS; `--db` is added to every parser there.
"""
