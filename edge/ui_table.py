"""Figures as the line page's table cells (edge/ui.py, edge/ui_shadow.py): each cell names its key in the status
JSON and its format, so ui_static/ui.js can refresh it from /api/status with the same formatting."""

import html


def fmt(value, kind=""):
    """A figure as the page shows it; ui.js's fmt() formats the same kinds the same way when it refreshes."""
    if kind == "n":  # a count: absent is none yet
        return str(value or 0)
    if kind == "mode":  # what the sorter does besides running (Sorter.mode): nothing shown while it sorts
        return f"({value})" if value else ""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.1f} %"
    if kind in ("ms", "rate"):
        return f"{value:.2f}" if kind == "ms" else f"{value:.1f}"
    if kind == "updown":
        return "up" if value else "DOWN"
    if kind == "alarm":
        return "ALARM" if value else "ok"
    if kind == "sizes":
        return " / ".join(f"{value[q]:.1f}" for q in ("p20", "p50", "p80"))
    return str(value)


def cell(status, key, kind=""):
    """<td> of the value at the dotted `key` of `status` (counts per_* and items* are 0 when absent)."""
    value = status
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    value = 0 if value is None and key.startswith(("per_", "items")) else value
    return f'<td data-key="{html.escape(key)}" data-fmt="{kind}">{html.escape(fmt(value, kind))}</td>'


def rows(status, table):
    """Table rows of (name, key, kind)."""
    return "\n".join(f"<tr><th>{html.escape(name)}</th>{cell(status, key, kind)}</tr>" for name, key, kind in table)
