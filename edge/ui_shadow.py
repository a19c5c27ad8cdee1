"""The line page's model section (edge/ui.py): the --shadow candidate's figures beside the live model's
(edge/shadow.py report), its confusion against the live model, and the form that promotes it or rolls back."""

import html

from edge.ui_table import cell, rows

FORM = ('<form method="post" action="/model/promote"><input name="token" type="password" placeholder="token" '
        'autocomplete="off"> <button type="submit">Promote candidate</button> <button type="submit" '
        'formaction="/model/rollback">Roll back</button></form>')


def shadow_rows(shadow):
    """The shadow's figures as table rows; ui.js refreshes them like the page's other cells."""
    if shadow is None:
        return ('<tr><td colspan="2">No shadow model: start the runner with --shadow CANDIDATE.tflite to compare '
                'one on the same crops.</td></tr>')
    return rows({"shadow": shadow}, [
        ("candidate", "shadow.candidate", ""), ("state", "shadow.state", ""), ("compared", "shadow.compared", "n"),
        ("dropped (candidate behind)", "shadow.dropped", "n"), ("agreement (same bin)", "shadow.agreement", "pct"),
        ("class agreement", "shadow.class_agreement", "pct"),
        ("recheck share, live", "shadow.recheck_share.live", "pct"),
        ("recheck share, candidate", "shadow.recheck_share.shadow", "pct"),
        ("candidate ms/item p99", "shadow.latency_ms.p99", "ms"),
    ])


def confusion(shadow):
    """Live class (rows) against the candidate's class (columns) as of the page's load, counts refreshed by ui.js;
    the form follows."""
    if shadow is None:
        return FORM
    table = shadow["confusion"]
    labels = list(table) + sorted({b for row in table.values() for b in row} - set(table))
    head = "".join(f"<th>{html.escape(b)}</th>" for b in labels)
    body = "".join(f"<tr><th>{html.escape(a)}</th>"
                   + "".join(cell({"shadow": shadow}, f"shadow.confusion.{a}.{b}", "n") for b in labels) + "</tr>"
                   for a in labels)
    return f'<table id="confusion"><tr><th>live \\ candidate</th>{head}</tr>{body}</table>\n{FORM}'
