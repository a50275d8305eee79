"""The one error type users see: a message that says what is wrong and what to do."""


class InputError(ValueError):
    """Bad user input (file, flag, config). The CLI prints it as one line and exits non-zero."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
