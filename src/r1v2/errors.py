"""The error type every user-facing failure raises.

The CLI prints its message as one line, ``r1v2 CMD: error: MESSAGE``, on stderr and exits 2
(the exit code argparse gives a bad command line); exit 1 is left to a command's own verdict,
such as ``r1v2 data check`` finding problems.
"""


class R1V2Error(Exception):
    """A problem the user can fix (bad input, a missing file, an unsupported model)."""
