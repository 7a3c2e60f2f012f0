"""The shell every mlabench HTML page shares: its style, plotly's config and the document head.

`report` and `compare` each write one self-contained page that opens offline;
both start from `head`, which inlines plotly.js once, so the two look alike and
neither imports the other.
"""

from __future__ import annotations

from html import escape

from plotly.offline import get_plotlyjs

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1400px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:0 0 4px}h3{font-size:15px;margin:12px 0 4px}
.sub{color:#57606a;margin:0 0 12px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 18px;margin:16px 0}
.desc{color:#57606a;margin:0 0 8px}
.note{background:#fff8c5;border:1px solid #d4a72c66;border-radius:6px;padding:8px 10px;margin:8px 0}
nav a{margin-right:14px;color:#0969da;text-decoration:none}
dl.env{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:4px 18px;margin:8px 0}
.kv{display:flex;gap:8px;min-width:0}.kv dt{color:#57606a;min-width:96px}.kv dd{margin:0;overflow-wrap:anywhere}
.pill{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;background:#eaeef2;margin-right:4px}
.st-ok{background:#dafbe1}.st-oom,.st-error,.st-inaccurate{background:#ffebe9}
.st-skipped,.st-unsupported{background:#fff8c5}
tr.st-ok{background:none}
.v-holds{background:#dafbe1}.v-differs{background:#ffebe9}.v-not-measured{background:#eaeef2}
table{border-collapse:collapse;font-size:12.5px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.err,td.note-cell{white-space:normal;min-width:240px;max-width:480px;color:#a40e26}
td.note-cell{color:#57606a}
table.claims td:first-child{white-space:normal;max-width:520px}.src{color:#57606a;font-size:11.5px}
table.rows th{position:sticky;top:0;background:#f6f8fa;cursor:pointer;user-select:none}
table.rows th.asc::after{content:" \\25B2"}table.rows th.desc::after{content:" \\25BC"}
.scroll{overflow:auto;max-height:640px;border:1px solid #d0d7de;border-radius:6px}
.controls{display:flex;gap:10px;align-items:center;margin:6px 0 10px}
.controls input{flex:0 1 420px;padding:5px 8px;border:1px solid #d0d7de;border-radius:6px}
.controls select{padding:5px;border:1px solid #d0d7de;border-radius:6px}#row-count{color:#57606a}
.empty{font-size:16px;color:#57606a;padding:24px 0}
"""


def head(title: str) -> str:
    """The document up to the opening of <main>: charset, title, style and plotly.js inlined."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style>"
        "<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body><main>'
    )
