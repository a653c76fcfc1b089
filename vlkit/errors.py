"""The errors the command line reports as one clear line instead of a traceback (all notebooks).

``UserError``: bad input (a file, a parameter, a checkpoint): exit status 2. ``ServiceError``: a
service the user configured (an OpenAI-compatible endpoint) failed or answered garbage: exit status 1.
Both carry a message that names the file, record or value; neither carries a credential.
"""


class UserError(ValueError):
    """Bad input from the user: printed as one clear line, exit status 2."""


class ServiceError(RuntimeError):
    """A configured service failed (after retries) or answered out of schema: one line, exit status 1."""
