"""The report's room: `runs` (a study's runs, MLflow -> pandas), `analysis` (pure functions of
them), `figures` (the report's plots), `page` (the HTML, Markdown and CSV, from templates/).
Only the CLI imports it.
"""
