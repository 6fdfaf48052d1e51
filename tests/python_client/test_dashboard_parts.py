"""The dashboard's parts without a browser or socket (issue 20): the charts'
history, and the package shipping every asset the page loads."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

from turnout._dashboard.history import History

ROOT = Path(__file__).resolve().parents[2]


def recent(requests: int, errors: int = 0, p50: float | None = None) -> dict[str, object]:
    return {"recent": {"requests": requests, "errors": errors, "p50": p50, "p95": p50}}


def test_points_are_rates_per_second_and_quantiles_or_none() -> None:
    history = History()
    history.add(100.0, 5.0, {"a": recent(10, 1, 0.002)}, ["a", "b"])
    (a,) = history.series(["a"])["a"]
    assert (a["requests_per_s"], a["errors_per_s"], a["p50"]) == (2.0, 0.2, 0.002)
    # An endpoint without stats yet (just created) gets a zero point.
    (b,) = history.series(["b"])["b"]
    assert (b["requests_per_s"], b["p50"], b["p99"]) == (0.0, None, None)


def test_old_points_and_deleted_endpoints_are_dropped() -> None:
    history = History(keep=10.0)
    for t in range(0, 30, 5):
        history.add(float(t), 5.0, {"a": recent(5), "gone": recent(5)}, ["a", "gone"])
    history.add(30.0, 5.0, {"a": recent(5), "gone": recent(5)}, ["a"])
    assert [p["t"] for p in history.series(["a"])["a"]] == [20.0, 25.0, 30.0]
    assert history.series(["gone"]) == {"gone": []}


def test_every_asset_of_the_page_is_package_data() -> None:
    # An editable install finds files that a wheel without them lacks.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["turnout._dashboard"]
    static = ROOT / "python_client" / "_dashboard" / "static"
    files = [str(path.relative_to(static.parent)) for path in static.iterdir()]
    assert files and all(any(fnmatch(f, p) for p in patterns) for f in files)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    # The machine may be offline: no CDN, no font or script from the web.
    static = ROOT / "python_client" / "_dashboard" / "static"
    for path in static.iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_a_log_read_gives_complete_lines_and_where_to_go_on() -> None:
    from turnout._dashboard.operations import complete_lines

    # A tail that began mid-log drops its cut first line; a last line without
    # its end waits for the next read, which starts where it starts.
    assert complete_lines(b"ut\nwhole\npart", 20, True, 4096) == (["whole"], 16)
    assert complete_lines(b"part of it\n", 27, False, 4096) == (["part of it"], 27)
    assert complete_lines(b"no end yet", 10, False, 4096) == ([], 0)
    # A line longer than a whole read is given as it is, or it never would be.
    assert complete_lines(b"xxxx", 4, False, 4) == (["xxxx"], 4)
