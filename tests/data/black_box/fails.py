"""A black box that cannot run: a message on stderr, exit code 3."""

import sys

print("loading weights", file=sys.stderr)
print("FileNotFoundError: weights/model.pt not found", file=sys.stderr)
sys.exit(3)
