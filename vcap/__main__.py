"""``python -m vcap`` (and ``accelerate launch -m vcap train ...``): the same as the ``vcap`` command."""

import sys

from .cli import main

sys.exit(main())
