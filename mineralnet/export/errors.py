"""The one exception of the exporter."""


class ExportError(RuntimeError):
    """An export that cannot go ahead or failed a check; nothing was written. The message names the file or
    model at fault and the fix, in one line, because the CLI prints it as-is after `error: `."""

    exit_status = 1


class AccuracyGateError(ExportError):
    """A quantized format lost more test accuracy against float32 than --max-accuracy-drop allows. Exit status 2:
    the remedy is a flag (lower the floor knowingly, or leave the format out), as for bad input."""

    exit_status = 2


class OptionError(ExportError):
    """A command-line value out of its range: exit status 2, like argparse's own usage errors."""

    exit_status = 2
