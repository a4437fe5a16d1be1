"""How atr's command-line tools end on a user error: status 2 and one line naming the input, no traceback.

A bad path, file, flag value or setting raises ValueError / OSError with a message that names the input and the fix
(DESIGN.md, Conventions); the CLIs print that message alone, with the library's argument names (`skip_bad_audio=True`)
put as the flags a user types (`--skip-bad-audio`). `ATR_DEBUG=1` (or atr-search's `--debug`) shows the traceback, and
any other exception (a bug) keeps it. Every flag takes both spellings, `--a-b` and `--a_b` (`both_spellings`), and a
flag the parser does not know is one line naming the closest one (`one_line_errors`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable

USER_ERRORS = (ValueError, OSError)
# library argument -> the flag that sets it on every atr command line
API_TO_FLAG = {"skip_bad_audio=True": "--skip-bad-audio", "overwrite=True": "--overwrite"}


def _other_spelling(flag):
    """`--a-b` for `--a_b` and the other way round (None when the flag has neither)."""
    name = flag[2:]
    other = name.replace("_", "-") if "_" in name else name.replace("-", "_")
    return f"--{other}" if other != name else None


def both_spellings(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let every `--a_b` / `--a-b` flag of `parser` answer to the other spelling too (help lists both); returns it."""
    for action in parser._actions:
        for flag in list(action.option_strings):
            other = _other_spelling(flag) if flag.startswith("--") else None
            if other and other not in parser._option_string_actions:
                action.option_strings.append(other)
                parser._option_string_actions[other] = action
    return parser


def one_line_errors(parser: argparse.ArgumentParser, prog: str | None = None) -> argparse.ArgumentParser:
    """Make `parser` end a bad command line with one line (no usage text) and status 2; an unknown flag names the closest."""
    prog = prog or parser.prog

    def error(message):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [word.split("=", 1)[0] for word in unknown.group(1).split() if word.startswith("-")]
            known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
            named = []
            for flag in flags or unknown.group(1).split()[:1]:
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                named.append(f"{flag}" + (f" (did you mean {close[0]}?)" if close else ""))
            message = f"unknown argument{'s' if len(named) > 1 else ''} {', '.join(named)}"
        parser.exit(2, f"{prog}: error: {message}: `{prog} --help` lists the flags\n")

    parser.error = error
    return parser


def cli_message(message: str, names: dict[str, str] | None = None) -> str:
    """`message` with library argument names replaced by the flags (`names`: this CLI's own, e.g. out_dir -> --index-dir)."""
    for api, flag in {**API_TO_FLAG, **(names or {})}.items():
        message = re.sub(rf"(?<![\w-]){re.escape(api)}(?![\w=])", flag, message)

    def same(flag):
        return flag.replace("_", "-")

    # "pass --overwrite (--overwrite)" / "--skip-bad-audio / --skip_bad_audio": the flag once
    message = re.sub(r"(--[\w-]+)( \(| / )(--[\w-]+)\)?", lambda m: m.group(1) if same(m.group(1)) == same(m.group(3))
                     else m.group(0), message)
    return message


def run_cli(prog: str, main: Callable[[list[str]], int | None], argv: list[str] | None = None, debug_flag: bool = True,
            names: dict[str, str] | None = None) -> int:
    """Run `main(argv)` (argv: sys.argv[1:] by default, `--debug` removed) and return its exit status.

    `debug_flag=False` leaves `--debug` to the CLI (train.py: TrainingArguments has its own); ATR_DEBUG=1 still works.
    `names` maps more library names to this CLI's flags in the one-line message (atr-search: out_dir -> --index-dir).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ATR_DEBUG", "") not in ("", "0") or (debug_flag and "--debug" in argv)
    argv = [arg for arg in argv if arg != "--debug"] if debug_flag else argv
    try:
        status = main(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        message = cli_message(" ".join(str(error).split()), names) or type(error).__name__
        print(f"{prog}: error: {message} (ATR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0
