"""`python -m sftjob_operator`: the same as `sftjob operator`."""

import sys

from sftjob_operator.main import run_operator

sys.exit(run_operator(sys.argv[1:]))
