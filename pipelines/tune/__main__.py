"""`python -m pipelines.tune`: see `pipelines.tune.sweep`."""

import sys

from .sweep import main

sys.exit(main())
