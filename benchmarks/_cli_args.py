"""The hand-rolled option parsing the profile-fitting benchmarks share (they take a folder and a few
flags, no argparse), so a flag taking a value is read one way everywhere."""

from __future__ import annotations


def pop_value(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``args``, both removed from ``args``; None when ``flag`` is absent."""
    if flag not in args:
        return None
    i = args.index(flag)
    value = args[i + 1]
    del args[i:i + 2]
    return value
