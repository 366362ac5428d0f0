import sys

from simcal.cli import main

sys.exit(main())
