"""UsageError: bad input from the user (a flag, a config field, a file), as opposed to a bug in r1jax.

Every error class for bad input subclasses it (OverrideError, DatasetError, TokenizerError, …), so an
entry point can print it as one line `error: <what, where>` and exit 2 (`r1jax.cli.run`) while a
programming error still raises with its traceback. It is a ValueError, so `except ValueError` and
`pytest.raises(ValueError)` keep working.
"""


class UsageError(ValueError):
    """Bad input that the user can fix; the message names the flag, field, file or line."""
