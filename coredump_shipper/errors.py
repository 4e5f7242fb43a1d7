"""One small exception hierarchy: raised deep down, mapped to exit codes and messages in the CLI."""


class ShipperError(Exception):
    """Base of every error coredump-shipper raises on purpose."""


class ConfigError(ShipperError):
    """A setting is missing or invalid; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class SkipFile(ShipperError):
    """The file must not be shipped (not a regular file, vanished, unreadable); `reason` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FileChanged(ShipperError):
    """The file changed while it was being uploaded: the upload must not count as success."""


class S3Error(ShipperError):
    """An S3 call failed, for good or after its attempts: which operation, the store's error code ("" for
    a network failure or timeout), whether trying again later may help, and the one-line `message`."""

    def __init__(
        self,
        operation: str,
        message: str,
        *,
        code: str = "",
        transient: bool,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(f"{operation} failed: {message}")
        self.operation = operation
        self.message = message
        self.code = code
        self.transient = transient
        # What botocore or the network raised: the diagnostics read the store's full answer from it.
        self.cause = cause
