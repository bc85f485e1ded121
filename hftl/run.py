"""Script entry for launchers: ``accelerate launch hftl/run.py RECIPE [overrides] [--resume] [--debug]``.

The same run as ``hftl run RECIPE ...``.
"""

import os
import sys

# Run as a script, this folder would sit first on sys.path and its modules (data.py, train.py, ...)
# could shadow top-level packages of the same names.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from hftl.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    debug = ["--debug"] if "--debug" in argv else []
    sys.exit(main([*debug, "run", *[a for a in argv if a != "--debug"]]))
