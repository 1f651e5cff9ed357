"""``first_few``: the one way messages name a long list of files or identities."""

from __future__ import annotations

from pathlib import Path

from export.text import first_few


def test_a_long_list_names_its_first_five_and_counts_the_rest():
    names = [f"{c}.png" for c in "abcdefghijklmnopq"]
    assert first_few(names) == "a.png, b.png, c.png, d.png, e.png and 12 more"


def test_a_short_list_is_named_whole():
    assert first_few(["a.png"]) == "a.png"
    assert first_few([f"{c}.png" for c in "abcde"]) == "a.png, b.png, c.png, d.png, e.png"
    assert first_few([]) == ""


def test_limit_paths_and_generators():
    assert first_few((Path("d") / f"{i}.jpg" for i in range(4)), limit=3) == (
        f"{Path('d/0.jpg')}, {Path('d/1.jpg')}, {Path('d/2.jpg')} and 1 more"
    )
    assert first_few(range(12), 10) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"
