"""One exception type for mistakes a user can fix (bad preset, bad override, missing data...).

The CLI turns a `UserError` into a single `mhc-bench: error: ...` line and a non-zero exit
code instead of a traceback, so every message raised with it must name the problem and,
where there is one, the way out.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def did_you_mean(word: str, choices) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
