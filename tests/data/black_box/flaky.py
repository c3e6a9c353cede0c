"""Like nifti_json.py, but call number $BLACK_BOX_FAIL_CALL fails (calls counted in $BLACK_BOX_COUNTER)."""

import os
import sys
from pathlib import Path

from _common import fail, read_nifti, score, write_json

counter = Path(os.environ["BLACK_BOX_COUNTER"])
call = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(call))
if call == int(os.environ["BLACK_BOX_FAIL_CALL"]):
    fail(f"segmentation fault in call {call} (simulated)")
write_json(sys.argv[2], {"probability": score(read_nifti(sys.argv[1])[0])})
