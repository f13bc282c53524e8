"""Snapshot helpers: wait for a still screen; show a mismatch as text in the test's output."""

from __future__ import annotations

import difflib
import html
import pickle
import re
import time

TEXT = re.compile(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>')
CHAR_WIDTH = 12.2  # Rich's SVG export: one terminal column


async def until_steady(pilot, limit: float = 10.0) -> None:
    """Until two pictures in a row, 0.1 s apart, equal the one before them."""
    app, last, same = pilot.app, None, 0
    deadline = time.monotonic() + limit
    while same < 2:
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.1)
        shot = app.export_screenshot()
        same = same + 1 if shot == last else 0
        last = shot
        if same < 2 and time.monotonic() > deadline:
            raise AssertionError(f"the screen was still changing after {limit:g} s")


def svg_lines(svg: str) -> list[str]:
    """The characters of a Rich SVG export, row by row."""
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in TEXT.finditer(svg):
        rows.setdefault(float(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3))))
    out = []
    for y in sorted(rows):
        line = ""
        for x, text in sorted(rows[y]):
            line = line.ljust(round(x / CHAR_WIDTH)) + text
        out.append(line.replace("\xa0", " ").rstrip())
    return out


def print_mismatch(node) -> None:
    from pytest_textual_snapshot import node_to_report_path

    data = pickle.loads(node_to_report_path(node).read_bytes())
    expected, actual = str(data[1]), str(data[2])
    diff = list(difflib.unified_diff(svg_lines(expected), svg_lines(actual), "snapshot", "this run", lineterm=""))
    if diff:
        print("\n".join(diff))
        return
    print("the same characters; colours or styles differ:")
    plain = [re.sub(r"terminal-\d+", "terminal", s).splitlines() for s in (expected, actual)]
    print("\n".join(list(difflib.unified_diff(*plain, "snapshot", "this run", lineterm=""))[:80]))
