"""`python -m pipelines.train`: see `pipelines.train.driver`."""

import sys

from .driver import main

sys.exit(main())
