"""The outcome report (docs/outcomes.md): every experiment's arms compared on what
became of their customers — `outreachctl outcomes`, the studio's Outcomes page and the
business dashboard's gauges read the same `build`."""
