import sys

from sipe.cli import main

sys.exit(main())
