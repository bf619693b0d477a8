"""The one exception type the CLI turns into a single error line."""


class ProbekitError(Exception):
    """A problem with the user's input (model, data, options, paths).

    The CLI prints ``probekit: error: <message>`` and exits with status 2,
    without a traceback.
    """
