"""The exporter's exceptions: MineralnetErrors, so the CLI prints them as one `error:` line and exits 2, like every
mineralnet command."""

from mineralnet.errors import MineralnetError


class ExportError(MineralnetError):
    """An export that cannot go ahead or failed a check; nothing was written. The message names the file or
    model at fault and the fix, in one line, because the CLI prints it as-is after `error: `."""


class AccuracyGateError(ExportError):
    """A quantized format lost more test accuracy against float32 than --max-accuracy-drop allows; the remedy is
    a flag (lower the floor knowingly, or leave the format out)."""


class OptionError(ExportError):
    """A command-line value out of its range."""
