"""The one exception of the exporter."""


class ExportError(RuntimeError):
    """An export that cannot go ahead or failed a check; nothing was written. The message names the file or
    model at fault and the fix, in one line, because the CLI prints it as-is after `error: `."""
