"""`mlabench report`: one self-contained HTML page per run directory.

`load` reads a run directory (shared with compare), `labels` names cases and
chart series, `charts` builds the plotly figures, `tables` the HTML tables and
header, `html` assembles the page. Importing this package loads neither
plotly nor torch; `mlabench.report.html.write_report` is the entry point.
"""
