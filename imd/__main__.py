import sys

from imd.cli.main import main

sys.exit(main())
