import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.study.grid import Cell, GridError, cells, parse_axis


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1,2,4", [1, 2, 4]),
        ("32:129:x2", [32, 64, 128]),
        ("0:513:16", list(range(0, 513, 16))),
        ("1:5", [1, 2, 3, 4]),
        ("4,1,2,2", [1, 2, 4]),
        ("1,8:33:x2", [1, 8, 16, 32]),
        (" 3 ", [3]),
    ],
)
def test_parse_axis(spec, expected):
    assert parse_axis(spec, minimum=0) == expected


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "empty"),
        ("1,,2", "empty item"),
        ("a", "not an integer"),
        ("1:2:3:4", "START:STOP"),
        ("32:32:x2", "empty"),
        ("0:10:x2", "START > 0"),
        ("1:10:x1", "at least 2"),
        ("1:10:0", "positive"),
        ("0", "below 1"),
        ("-4", "below 1"),
    ],
)
def test_parse_axis_errors(spec, fragment):
    with pytest.raises(GridError, match=fragment):
        parse_axis(spec, "batch")


@given(st.integers(1, 500), st.integers(1, 5000), st.integers(2, 5))
def test_geometric_range_excludes_stop(start, stop, factor):
    try:
        values = parse_axis(f"{start}:{stop}:x{factor}")
    except GridError:
        assert start >= stop
        return
    assert values[0] == start and all(v < stop for v in values)
    assert all(b == a * factor for a, b in zip(values, values[1:]))
    assert values[-1] * factor >= stop


@given(st.integers(0, 300), st.integers(0, 600), st.integers(1, 50))
def test_arithmetic_range_matches_python_range(start, stop, step):
    expected = list(range(start, stop, step))
    if not expected:
        with pytest.raises(GridError):
            parse_axis(f"{start}:{stop}:{step}", minimum=0)
    else:
        assert parse_axis(f"{start}:{stop}:{step}", minimum=0) == expected


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=20))
def test_comma_lists_sorted_unique(values):
    assert parse_axis(",".join(map(str, values))) == sorted(set(values))


def test_cells_product_smallest_first_and_dominance():
    grid = cells([4, 1], [128, 32], [32])
    assert [c.dims() for c in grid] == [(1, 32, 32), (1, 128, 32), (4, 32, 32), (4, 128, 32)]
    assert Cell(4, 128, 32).dominates(Cell(1, 128, 32))
    assert not Cell(4, 32, 32).dominates(Cell(1, 128, 32))
    assert not Cell(1, 32, 32).dominates(Cell(1, 32, 32))
