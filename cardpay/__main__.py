"""`python -m cardpay`: the same as the `cardpay` console script."""

import sys

from cardpay.cli.main import main

sys.exit(main())
