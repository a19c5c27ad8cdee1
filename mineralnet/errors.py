"""One base for the problems a user can fix, and one exit-code policy for every command-line tool.

Each error's message is one line naming the file or flag and the fix. Every CLI prints it as `error: ...` on
stderr and exits with EXIT_BAD_INPUT; anything else is a bug and keeps its traceback.
"""

import functools
import sys

EXIT_BAD_INPUT = 2  # the usual code for bad usage (argparse's too), so scripts and systemd tell it from a crash


class MineralnetError(ValueError):
    """A problem with the user's input (data, flags, run directory, model file): one line with the fix."""


def cli(main):
    """Decorate a `main(argv=None)`: a MineralnetError becomes one `error: ...` line and exit code 2; returning
    None means success (0)."""

    @functools.wraps(main)
    def run(argv=None):
        try:
            code = main(argv)
        except MineralnetError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0 if code is None else code

    return run
