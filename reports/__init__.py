"""HTML (plotly) and JSON reports."""
