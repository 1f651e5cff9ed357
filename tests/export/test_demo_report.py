"""The demo's summary shows the export's parity table without the converters' own notes."""

from __future__ import annotations

from export.demo.report import parity_table

EXPORT_OUT = """\
Relu partition has more than one output node
Relu partition has more than one output node
file                   bits agree  mode                EER   torch   Δ pp  FNMR@0.1%   torch  ok
------------------------------------------------------------------------------------------------
print.int8.tflite          99.98%  print             0.01%   0.01%  +0.00      0.00%   0.00%  yes
gate: bit agreement >= 99.00%, EER <= torch + 0.50 pp on 192 test samples: PASSED
"""


def test_the_parity_table_starts_at_its_header():
    table = parity_table(EXPORT_OUT)
    assert table[0].startswith("file ")
    assert table[-1].startswith("gate: ")
    assert not any("Relu partition" in ln for ln in table)


def test_an_output_without_a_table_is_kept_whole():
    assert parity_table("export: no models\n") == ["export: no models"]
    assert parity_table("") == []
