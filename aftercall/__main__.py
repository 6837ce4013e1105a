import sys

from aftercall.cli import main

sys.exit(main())
