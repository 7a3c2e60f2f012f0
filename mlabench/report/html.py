"""Assemble report.html: one self-contained page (plotly.js inlined once) that opens offline.

Layout: header with the environment fingerprint and row counts, the headline
table (per variant: KV bytes per token, best backend and latency, ratios to MHA),
the charts (`charts`, `tradeoff`; round-to-round spread when the run has rounds),
the claims table when the run has `claims` rows, and every row in a sortable,
filterable table. A run whose cases ran on several device kinds (a mixed cluster) gets
the headline and charts once per kind, never averaged across kinds. No torch; plotly
only renders JSON to HTML.
"""

from __future__ import annotations

import dataclasses
from html import escape
from pathlib import Path

import pandas as pd
import plotly.io as pio

from mlabench import claims, htmlpage, schema
from mlabench.errors import UsageError
from mlabench.frontier.record import read_plan
from mlabench.report import charts, tables, tradeoff
from mlabench.report.frontier_chart import frontier_chart, winners_table
from mlabench.report.tp_chart import tp_chart
from mlabench.rundir import RunData, load_run

# Sort on click (numbers numerically, blanks last); filter by words and status.
JS = """
(function(){
  var table=document.getElementById('rows'); if(!table) return;
  var tbody=table.tBodies[0], rows=Array.prototype.slice.call(tbody.rows);
  var text=document.getElementById('row-filter'), status=document.getElementById('status-filter');
  var count=document.getElementById('row-count');
  function apply(){
    var words=text.value.toLowerCase().split(/\\s+/).filter(Boolean), st=status.value, shown=0;
    rows.forEach(function(r){
      var s=r.getAttribute('data-status'), hay=r.textContent.toLowerCase();
      var ok=(!st||(st==='!ok'?s!=='ok':s===st))&&words.every(function(w){return hay.indexOf(w)>=0;});
      r.style.display=ok?'':'none'; if(ok) shown++;
    });
    count.textContent=shown+' of '+rows.length+' rows';
  }
  text.addEventListener('input',apply); status.addEventListener('change',apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      Array.prototype.forEach.call(th.parentNode.cells,function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      function key(r){var v=r.cells[i].getAttribute('data-v'); if(v==='') return null;
        var n=Number(v); return isNaN(n)?v.toLowerCase():n;}
      rows.sort(function(a,b){var x=key(a),y=key(b);
        if(x===null) return y===null?0:1; if(y===null) return -1;
        if(typeof x!==typeof y){x=String(x);y=String(y);}
        return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      rows.forEach(function(r){tbody.appendChild(r);});
    });
  });
  apply();
})();
"""


def _section(sid: str, title: str, body: str, description: str = "") -> str:
    desc = f'<p class="desc">{escape(description)}</p>' if description else ""
    return f'<section id="{escape(sid)}"><h2>{escape(title)}</h2>{desc}{body}</section>'


def _chart_html(chart: charts.Chart) -> str:
    body = f'<p class="note">{escape(chart.note)}</p>' if chart.note else ""
    if chart.figure is not None:
        body += pio.to_html(chart.figure, full_html=False, include_plotlyjs=False, div_id=chart.id,
                            config=htmlpage.PLOT_CONFIG, default_width="100%")
    return _section(f"sec-{chart.id}", chart.title, body, chart.description)


def performance_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows for the performance charts: the claims suite's fixed shapes only when nothing else ran."""
    others = df[df["suite"] != claims.CLAIMS_SUITE]
    return others if not others.empty else df


def device_kinds(df: pd.DataFrame) -> list[str]:
    """The device kinds the rows ran on, when they name more than one (else [])."""
    if "device_name" not in df.columns:
        return []
    kinds = sorted({str(v) for v in df["device_name"].dropna() if str(v).strip()})
    return kinds if len(kinds) > 1 else []


def _performance(sections: list[str], nav: list[tuple[str, str]], df: pd.DataFrame, samples: pd.DataFrame | None,
                 meta: dict, base: tuple[str, str], suffix: str, kind: str) -> None:
    """The headline table and charts of `df`'s rows; `suffix` and `kind` tell one device kind's apart."""
    perf = performance_rows(df)
    if kind and samples is not None:  # this kind's cases only
        samples = samples[samples["case_id"].isin(df["case_id"])]
    sections.append(_section(f"sec-headline{suffix}", f"Headline{kind}", tradeoff.headline_table(perf),
                             "Per variant: KV-cache bytes per token (one layer) and how many times smaller than "
                             "MHA's it is, and at each sequence length the fastest backend, its median latency and "
                             "its speedup over MHA's fastest (MHA's latency / the variant's). Both ratios read as "
                             "the speedup chart: above 1 is better than MHA."))
    nav.append((f"sec-headline{suffix}", f"Headline{kind}"))
    built = [tradeoff.tradeoff_chart(perf), charts.latency_chart(perf), charts.kv_chart(perf),
             charts.speedup_chart(perf, base), charts.roofline_chart(perf, meta), charts.rank_chart(perf),
             charts.round_spread_chart(df, samples), tp_chart(perf)]
    for chart in (c for c in built if c is not None):
        chart = dataclasses.replace(chart, id=chart.id + suffix, title=chart.title + kind)
        sections.append(_chart_html(chart))
        nav.append((f"sec-{chart.id}", chart.title))


def render_report(run: RunData, baseline: str = "mha:eager") -> str:
    """The whole page as a string."""
    try:
        base = charts.parse_baseline(baseline)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    df, meta = run.results, run.meta
    suite = meta.get("suite") or ", ".join(sorted(set(df["suite"]))) or "unknown suite"
    sections: list[str] = []
    nav: list[tuple[str, str]] = []
    if df.empty:
        sections.append(_section("sec-empty", "No rows",
                                 f'<p class="empty">{escape(str(run.results_path))} has no rows: the sweep '
                                 "recorded no case, so there is nothing to chart.</p>"))
    else:
        frontier = read_plan(run.path)
        if frontier is not None:  # a `mlabench frontier` run: its curve first, it is what the run is for
            sections.append(_chart_html(frontier_chart(frontier, df)))
            nav.append(("sec-chart-frontier", "Serving frontier"))
            sections.append(_section("sec-frontier-winners", "Winner at each context", winners_table(frontier, df)))
            nav.append(("sec-frontier-winners", "Winners"))
        kinds = device_kinds(df)
        if len(kinds) > 1:
            sections.append(_section("sec-devices", "Device kinds", "",
                                     f"These cases ran on {len(kinds)} device kinds ({', '.join(kinds)}): each "
                                     "kind has its own headline and charts below; timings are never averaged "
                                     "across kinds."))
        for k, kind in enumerate(kinds or [None]):
            rows = df if kind is None else df[df["device_name"] == kind]
            # Peaks in meta.json are of the run's first device kind; another kind's roofline has none.
            kind_meta = meta if kind in (None, (meta.get("device") or {}).get("name")) else \
                {key: v for key, v in meta.items() if key != "peaks"}
            _performance(sections, nav, rows, run.samples, kind_meta, base, "" if kind is None else f"-{k}",
                         "" if kind is None else f" ({kind})")
        if claims.has_claims(df):
            sections.append(_section("sec-claims", "Claims", tables.claims_table(claims.evaluate_claims(df)),
                                     "Published figures beside what this run measured (rows with suite = claims)."))
            nav.append(("sec-claims", "Claims"))
        sections.append(_section("sec-rows", "All rows", tables.rows_table(df),
                                 "Every case with its status; failed, skipped and unsupported rows keep their "
                                 "reason in the error column. Click a header to sort."))
        nav.append(("sec-rows", "All rows"))
    links = "".join(f'<a href="#{escape(i)}">{escape(t)}</a>' for i, t in nav)
    summary = tables.status_summary(df) if not df.empty else '<p class="summary">0 rows</p>'
    title = f"mlabench report: {suite}"
    return (
        htmlpage.head(title)
        + f"<h1>{escape(title)}</h1><p class=\"sub\">{escape(str(run.path))}</p>"
        f"<section id=\"sec-env\"><h2>Environment</h2>{tables.env_header(meta, df)}{summary}"
        f"<nav>{links}</nav></section>"
        + "".join(sections)
        + f"</main><script>{JS}</script></body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None, baseline: str = "mha:eager") -> Path:
    """Render the run directory's report to `output` (default RUN_DIR/report.html); returns the path."""
    run = load_run(run_dir)  # samples: the round-to-round spread chart
    page = render_report(run, baseline)
    target = Path(output) if output is not None else run.path / schema.REPORT_HTML
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{target}: cannot write the report ({exc.strerror or exc})") from None
    return target
