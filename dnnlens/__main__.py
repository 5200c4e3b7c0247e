import sys

from dnnlens.cli import main

sys.exit(main())
