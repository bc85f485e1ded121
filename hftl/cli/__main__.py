import sys

from hftl.cli.commands import main

sys.exit(main())
