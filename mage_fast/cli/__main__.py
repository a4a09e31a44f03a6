"""`python -m mage_fast.cli`: the same as the `mage-fast` command."""
import sys

from . import main

sys.exit(main())
