"""Script entry for launchers: ``accelerate launch hftl/run.py RECIPE [overrides] [--resume] [--debug] [--quiet]``.

The same run as ``hftl run RECIPE ...``.
"""

import os
import sys

# Run as a script, this folder would sit first on sys.path and its subpackages (data/, training/, ...)
# could shadow top-level packages of the same names.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from hftl.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    flags = ("--debug", "--quiet", "-q", "--verbose", "-v")  # hftl's own options go before the command
    sys.exit(main([*(a for a in argv if a in flags), "run", *[a for a in argv if a not in flags]]))
