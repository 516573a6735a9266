import sys

from okd.command import main

sys.exit(main())
