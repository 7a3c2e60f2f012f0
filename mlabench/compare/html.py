"""`compare --format html`: the verdict as one self-contained page (plotly.js inlined, opens offline).

The chart draws every timed case's ratio (candidate / baseline) with its
interval, coloured by verdict, against the threshold band, so a reviewer sees at
once which cases moved, by how much, and how sure the test is. The table below
lists every case with the same columns as the markdown verdict.
"""

from __future__ import annotations

import math
from html import escape

import plotly.graph_objects as go
import plotly.io as pio

from mlabench import htmlpage
from mlabench.compare import render
from mlabench.compare.gate import SEVERITY, Comparison

VERDICT_COLOR = {
    "regressed": "#cf222e", "changed": "#cf222e", "inconclusive": "#bf8700", "only-baseline": "#bf8700",
    "only-candidate": "#0969da", "underpowered": "#8250df", "improved": "#1a7f37", "indicative": "#54aeff",
    "not-timed": "#8c959f", "same": "#57606a",
}
ROW_HEIGHT = 18  # px per case in the ratio chart


def ratio_figure(cmp: Comparison) -> go.Figure | None:
    """Ratio and interval per timed case, one trace per verdict; None when no case has a ratio."""
    cases = [c for c in cmp.cases if c.ratio is not None and math.isfinite(c.ratio) and c.ratio > 0]
    if not cases:
        return None
    fig = go.Figure()
    order = [c.label for c in cases]
    for verdict in SEVERITY:
        group = [c for c in cases if c.verdict == verdict]
        if not group:
            continue
        lo = [c.ratio - c.ci_low if c.ci_low is not None else 0.0 for c in group]
        hi = [c.ci_high - c.ratio if c.ci_high is not None else 0.0 for c in group]
        detect = [f"{c.detectable:.1%}" if c.detectable is not None else "none" for c in group]
        fig.add_trace(go.Scatter(
            x=[c.ratio for c in group], y=[c.label for c in group], mode="markers", name=f"{verdict} ({len(group)})",
            marker=dict(color=VERDICT_COLOR[verdict], size=8),
            error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1.5),
            customdata=list(zip(detect, [c.method or "-" for c in group], strict=True)),
            hovertemplate="%{y}<br>ratio %{x:.3f}<br>detects %{customdata[0]} (%{customdata[1]})<extra></extra>",
        ))
    t = cmp.settings.threshold
    for x, dash in ((1.0, "solid"), (1 + t, "dash"), (1 - t, "dash")):
        fig.add_vline(x=x, line_dash=dash, line_color="#888", line_width=1)
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], tickfont=dict(size=10),
                     range=[-0.5, len(order) - 0.5])
    fig.update_xaxes(type="log", title_text="candidate / baseline (log scale; dashed: threshold)")
    fig.update_layout(template="plotly_white", height=max(320, 90 + ROW_HEIGHT * len(cases)),
                      margin=dict(l=20, r=20, t=30, b=50))
    return fig


def _table(cmp: Comparison) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in render.HEADERS)
    body = []
    for c in cmp.cases:
        cells = render._row(c)
        tds = [f'<td><span class="pill" style="background:{VERDICT_COLOR[c.verdict]}22">{escape(cells[0])}</span></td>']
        tds += [f'<td class="num">{escape(x)}</td>' if i in (3, 4, 5, 7, 8) else
                (f'<td class="note-cell">{escape(x)}</td>' if i == len(cells) - 1 else f"<td>{escape(x)}</td>")
                for i, x in enumerate(cells) if i > 0]
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (f'<div class="scroll"><table class="rows"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def render_html(cmp: Comparison) -> str:
    """The whole page as a string."""
    line = render.summary(cmp)
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in cmp.env_notes)
    fig = ratio_figure(cmp)
    chart = (pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id="chart-ratio",
                         config=htmlpage.PLOT_CONFIG, default_width="100%")
             if fig is not None else '<p class="empty">No timed case to plot.</p>')
    color = "#1a7f37" if cmp.passed else "#cf222e"
    title = "mlabench compare"
    return (
        htmlpage.head(title)
        + f"<h1>{title}</h1><p class=\"sub\">{escape(cmp.baseline)} &rarr; {escape(cmp.candidate)}</p>"
        f'<section id="sec-verdict"><h2 style="color:{color}">{escape(line)}</h2>'
        f'<p class="desc">Method: {escape(cmp.method)}.</p>{notes}</section>'
        '<section id="sec-ratio"><h2>Change per case</h2><p class="desc">Candidate / baseline latency with its '
        "interval, worst verdict first. A case regresses only past the dashed threshold and when the corrected "
        f"test is significant.</p>{chart}</section>"
        f'<section id="sec-cases"><h2>All cases</h2>{_table(cmp)}</section>'
        "</main></body></html>\n"
    )
