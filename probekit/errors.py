"""The one exception type the CLI turns into a single error line."""


class ProbekitError(Exception):
    """A problem with the user's input (model, data, options, paths).

    The CLI prints ``probekit: error: <message>`` and exits with status 2,
    without a traceback. Line breaks in the message (often from echoed user
    input) are escaped, so it stays one line.
    """

    def __init__(self, message: str = ""):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
