"""`python -m crome_cli ...` (and `torchrun -m crome_cli train ...`): the same as the `crome-edge` script."""
import sys

from crome_cli.main import main

sys.exit(main())
