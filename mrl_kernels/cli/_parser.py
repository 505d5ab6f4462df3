"""What the command lines share: argparse's parser, whose refusal of a value
that starts with '-' shows how to pass it."""
from __future__ import annotations

import argparse
import re
import sys

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with defaults in the help. argparse reads a value that
    starts with '-' and is not a plain negative number (``--level-weights
    -1,1,1,1,1``, ``--users -0``) as a flag and says the flag "expected one
    argument"; this parser adds the form that passes the value
    (``--level-weights=-1,1,1,1,1``)."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)
        self._argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        match = re.fullmatch(r"argument (\S+): expected one argument", message)
        if match:
            flag = match[1].split("/")[-1]
            at = [i for i, a in enumerate(self._argv[:-1])
                  if len(a) > 2 and a.startswith("--") and flag.startswith(a)]  # the flag, or its abbreviation
            if at and self._argv[at[-1] + 1].startswith("-"):
                value = self._argv[at[-1] + 1]
                message += f" (a value that starts with '-' is given with '=': {flag}={value})"
        super().error(message)
