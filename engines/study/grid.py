"""Grid axes in the syntax of seed 003: comma lists and ranges with the stop excluded.

    "1,2,4"        -> [1, 2, 4]
    "32:129:x2"    -> [32, 64, 128]      geometric (multiply by 2)
    "0:513:16"     -> [0, 16, ..., 512]  arithmetic
    "1:9"          -> [1, 2, ..., 8]     step 1
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

MAX_AXIS_VALUES = 4096
MAX_CELLS = 10_000  # a grid larger than this takes days and its plan alone gigabytes: say so instead
# The largest value an axis takes: beyond these no engine runs, and SQLite's integers would overflow.
MAX_VALUE = {"batch": 1_000_000, "completions": 1_000_000}
MAX_TOKENS = 10_000_000  # input, output, shared and suffix lengths


class GridError(ValueError):
    """A grid spec that cannot be parsed; the message names the token and the fix."""


def _shown(text: str) -> str:
    """A token as an error shows it: quoted, escapes visible, short."""
    r = repr(text)
    return r if len(r) <= 42 else r[:40] + "…"


def _int(token: str, whole: str, name: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise GridError(f"{name}: {_shown(token)} in {_shown(whole)} is not an integer "
                        "(use e.g. 1,2,4 or 32:129:x2)") from None


def _range(part: str, whole: str, name: str) -> list[int]:
    pieces = part.split(":")
    if len(pieces) not in (2, 3):
        raise GridError(f"{name}: {_shown(part)} is not START:STOP or START:STOP:STEP (e.g. 32:129:x2)")
    start = _int(pieces[0], whole, name)
    stop = _int(pieces[1], whole, name)
    step = pieces[2] if len(pieces) == 3 else "1"
    values: list[int] = []
    if step.startswith("x"):
        factor = _int(step[1:], whole, name)
        if factor < 2:
            raise GridError(f"{name}: factor in {_shown(part)} must be at least 2 (e.g. x2)")
        if start <= 0:
            raise GridError(f"{name}: a geometric range needs START > 0, got {_shown(part)}")
        v = start
        while v < stop:
            values.append(v)
            v *= factor
            if len(values) > MAX_AXIS_VALUES:
                break
    else:
        inc = _int(step, whole, name)
        if inc <= 0:
            raise GridError(f"{name}: step in {_shown(part)} must be positive")
        values = list(range(start, stop, inc)[: MAX_AXIS_VALUES + 1])  # a range slice: 1:10**7 never listed whole
    if not values:
        raise GridError(f"{name}: range {_shown(part)} is empty (the stop is excluded: use e.g. 32:129:x2)")
    if len(values) > MAX_AXIS_VALUES:
        raise GridError(f"{name}: {_shown(part)} has more than {MAX_AXIS_VALUES} values")
    return values


def parse_axis(spec: str | int | list[int], name: str = "axis", minimum: int = 1,
               maximum: int | None = None) -> list[int]:  # fmt: skip
    """Parse one axis into sorted unique integers, each in [minimum, maximum] (default: the axis's cap)."""
    maximum = maximum or MAX_VALUE.get(name, MAX_TOKENS)
    if isinstance(spec, bool) or not isinstance(spec, (int, list, str)):
        raise GridError(f"{name}: give a list such as 1,2,4 or [1, 2, 4], not {type(spec).__name__}")
    if isinstance(spec, int):
        values = [spec]
    elif isinstance(spec, list):
        if len(spec) > MAX_AXIS_VALUES:
            raise GridError(f"{name}: {len(spec)} values; at most {MAX_AXIS_VALUES}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            bad = next(v for v in spec if not isinstance(v, int) or isinstance(v, bool))
            raise GridError(f"{name}: {str(bad)[:40]!r} is not a whole number (use e.g. [1, 2, 4])")
        values = list(spec)
    else:
        text = spec.strip()
        if not text:
            raise GridError(f"{name}: empty (give a list such as 1,2,4)")
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise GridError(f"{name}: empty item in {_shown(text)}")
            values.extend(_range(part, text, name) if ":" in part else [_int(part, text, name)])
    if not values:
        raise GridError(f"{name}: no values")
    bad = [v for v in values if v < minimum]
    if bad:
        raise GridError(f"{name}: {bad[0]} is below {minimum}; every value must be >= {minimum}")
    big = [v for v in values if v > maximum]
    if big:
        shown = str(big[0]) if len(str(big[0])) <= 24 else str(big[0])[:20] + "…"
        raise GridError(f"{name}: {shown} is above {maximum:,}; every value must be <= {maximum:,}")
    return sorted(set(values))


def check_cells(count: int) -> None:
    if count > MAX_CELLS:
        raise GridError(f"the grid has {count:,} cells, more than {MAX_CELLS:,}; narrow an axis (a study that "
                        "large runs for days)")  # fmt: skip


@dataclass(frozen=True, order=True)
class Cell:
    """One grid point. `extra` carries further axes (e.g. shared-prefix length)."""

    batch: int
    input_len: int
    output_len: int
    extra: tuple[tuple[str, float], ...] = ()  # int axes; request_rate a float or inf

    def dims(self) -> tuple[int, ...]:
        return (self.batch, self.input_len, self.output_len, *(v for _, v in self.extra))

    def dominates(self, other: "Cell") -> bool:
        """At least as large as `other` in every dimension and larger in one."""
        a, b = self.dims(), other.dims()
        return len(a) == len(b) and all(x >= y for x, y in zip(a, b)) and a != b

    def label(self) -> str:
        extra = "".join(f" {k}={_value_text(v)}" for k, v in self.extra)
        return f"b={self.batch} in={self.input_len} out={self.output_len}{extra}"

    def params(self) -> dict[str, int | float | str]:
        """The extra axes as stored and sent: JSON has no infinity, so an unpaced request rate is "inf"."""
        return {k: "inf" if v == float("inf") else v for k, v in self.extra}


def _value_text(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:g}" if isinstance(v, float) else str(v)


def cells(batch: list[int], input_len: list[int], output_len: list[int]) -> list[Cell]:
    """The cartesian product, smallest first, so OOM-dominance skipping can work."""
    check_cells(len(batch) * len(input_len) * len(output_len))
    return [Cell(b, i, o) for b, i, o in product(sorted(batch), sorted(input_len), sorted(output_len))]
