"""The error type every user-facing failure raises; the CLI prints its message and exits 1."""


class R1V2Error(Exception):
    """A problem the user can fix (bad input, a missing file, an unsupported model)."""
