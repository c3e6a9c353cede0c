"""Writes a fixed, often broken, JSON output chosen by its third argument (the input is not read)."""

import sys
from pathlib import Path

OUTPUTS = {
    "nan": '{"probability": NaN}',
    "out_of_range": '{"probability": 1.7}',
    "text": '{"probability": "high"}',
    "malformed": '{"probability": 0.5',
    "missing_key": '{"score": 0.5}',
    "list": "[0.5]",
    "probabilities": '{"probabilities": [0.25, 0.75]}',
    "short_list": '{"probabilities": [0.25]}',
    "partial_keys": '{"case-000000": 0.25}',
}
mode = sys.argv[3]
if mode != "nothing":
    Path(sys.argv[2]).write_text(OUTPUTS[mode])
