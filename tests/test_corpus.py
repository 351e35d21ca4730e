"""corpus.py's cleaning rules count the documents they change: line ends alone are not
counted as control characters, real control characters are. Hand-written inputs."""

from collections import Counter

import pytest

from corpus import clean_text


@pytest.mark.parametrize("raw, cleaned", [
    ("a line from a windows file\r\nand the next line of it", "a line from a windows file\n"
                                                             "and the next line of it"),
    ("an old mac file ends lines\rwith a lone carriage return", "an old mac file ends lines\n"
                                                                "with a lone carriage return"),
], ids=["windows", "old_mac"])
def test_line_ends_alone_become_newlines_and_count_as_no_rule(raw, cleaned):
    assert clean_text(raw) == (cleaned, [])


@pytest.mark.parametrize("raw, cleaned", [
    ("a bell\x07 rings in this sentence", "a bell rings in this sentence"),
    ("delete\x7f and a C1 next line\x85 are gone", "delete and a C1 next line are gone"),
    # with windows line ends too: the null byte makes it count, once
    ("a windows line\r\nwith a null\x00 byte in it", "a windows line\nwith a null byte in it"),
], ids=["bell", "delete_and_c1", "with_windows_line_ends"])
def test_a_real_control_character_is_removed_and_counted(raw, cleaned):
    assert clean_text(raw) == (cleaned, ["control_chars"])


def test_the_control_chars_count_over_a_corpus():
    """As prepare counts: each document adds one to every rule that fired on it."""
    documents = ["first windows document\r\nwith two lines\r\n",
                 "second document, with a form\x0cfeed in it",
                 "third document: windows\r\nand an escape\x1b too",
                 "fourth document, clean from the start"]
    counts = Counter(rule for text in documents for rule in clean_text(text)[1])
    assert counts == {"control_chars": 2}
