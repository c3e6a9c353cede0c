"""A black box that hangs, with a child process that hangs too ($BLACK_BOX_DUMP/child.pid holds its pid)."""

import os
import subprocess
import sys
import time
from pathlib import Path

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
if os.environ.get("BLACK_BOX_DUMP"):
    (Path(os.environ["BLACK_BOX_DUMP"]) / "child.pid").write_text(str(child.pid))
time.sleep(30)
