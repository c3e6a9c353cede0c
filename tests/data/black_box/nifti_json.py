"""NIfTI in, JSON out: {"probability": p} for one case, {"case-NNNNNN": p, ...} for a batch folder."""

import sys
from pathlib import Path

from _common import entry, read_nifti, score, write_json

source, output = Path(sys.argv[1]), sys.argv[2]
if source.is_dir():
    write_json(output, {entry(p): score(read_nifti(p)[0]) for p in sorted(source.iterdir())})
else:
    write_json(output, {"probability": score(read_nifti(source)[0]), "model": "lung-window"})
