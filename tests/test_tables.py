"""icl.format_table: alignment, formats, mapping rows, and the refusals."""

import numpy as np
import pytest
import torch

import icl_lib as icl


def test_columns_are_aligned_and_formatted():
    text = icl.format_table([("a", 1.5, 3), ("long name", np.float64(0.25), torch.tensor(12))],
                            ("name", "x", "n"), ("", ".2f", "d"))
    assert text.splitlines() == [
        "name          x   n",
        "---------  ----  --",
        "a          1.50   3",
        "long name  0.25  12",
    ]


def test_mapping_rows_follow_the_header():
    text = icl.format_table([{"b": 2, "a": "x"}], ("a", "b"), ("", ".1f"))
    assert text.splitlines()[-1] == "x  2.0"


def test_print_table_prints_format_table(capsys):
    icl.print_table([(1,)], ("k",))
    assert capsys.readouterr().out == "k\n-\n1\n"


@pytest.mark.parametrize("rows, header, formats, match", [
    ([(1, 2)], ("a",), None, "row 0 has 2 values for 1 columns"),
    ([(1,)], ("a",), (".1f", ".2f"), "2 formats for 1 columns"),
    ([{"a": 1}], ("a", "b"), None, r"lacks the column\(s\) \['b'\]"),
    ([], (), None, "at least one column"),
    ([("x" * 80,)], ("a",), None, "more than 74"),
])
def test_bad_tables_are_refused(rows, header, formats, match):
    with pytest.raises(ValueError, match=match):
        icl.format_table(rows, header, formats)
