"""`python -m pipelines.shards`: see `pipelines.shards.cli`."""

import sys

from .cli import main

sys.exit(main())
