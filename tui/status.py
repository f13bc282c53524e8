"""One colour per status word, for every screen and CLI table (they once disagreed on "cancelled")."""

from __future__ import annotations

# Cell statuses (done, oom, skipped, crashed, failed, cancelled) and run statuses (starting, running, done,
# failed, cancelled, interrupted) share their words, so they share their colours.
STATUS_STYLE = {"done": "green", "starting": "cyan", "running": "cyan", "oom": "bold red", "crashed": "bold magenta",
                "failed": "red", "skipped": "dim", "cancelled": "yellow", "interrupted": "magenta"}  # fmt: skip

# Table rows take their row's status as the style of every value: a done row stays plain; the comparison
# keys colour a ratio.
TABLE_STYLE = {**STATUS_STYLE, "done": "", "missing": "dim", "better": "green", "worse": "yellow", "same": "dim"}
