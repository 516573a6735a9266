import sys

from okd.cli import main

sys.exit(main())
