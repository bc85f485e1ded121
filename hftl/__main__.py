import sys

from hftl.cli import main

sys.exit(main())
