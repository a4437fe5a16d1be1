"""How atr's command-line tools end on a user error: status 2 and one line naming the input, no traceback.

A bad path, file, flag value or setting raises ValueError / OSError with a message that names the input and the fix
(DESIGN.md, Conventions); the CLIs print that message alone. `ATR_DEBUG=1` (or atr-search's `--debug`) shows the
traceback, and any other exception (a bug) keeps it.
"""

import os
import sys

USER_ERRORS = (ValueError, OSError)


def run_cli(prog, main, argv=None, debug_flag=True):
    """Run `main(argv)` (argv: sys.argv[1:] by default, `--debug` removed) and return its exit status.

    `debug_flag=False` leaves `--debug` to the CLI (train.py: TrainingArguments has its own); ATR_DEBUG=1 still works.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ATR_DEBUG", "") not in ("", "0") or (debug_flag and "--debug" in argv)
    argv = [arg for arg in argv if arg != "--debug"] if debug_flag else argv
    try:
        status = main(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message} (ATR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
