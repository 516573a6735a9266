"""The `okd` command's entry point (console script and `python -m okd`): a Ctrl-C while the command is still
importing its libraries (transformers alone takes seconds) ends it like one during the work, with one line."""

import sys


def main() -> int:
    try:
        from okd.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        print("okd: interrupted", file=sys.stderr)
        return 130
