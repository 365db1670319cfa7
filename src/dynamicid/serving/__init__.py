"""`dynamicid serve`: the web app and its HTTP API (Gradio), over `Engine`, which holds the pipeline.

config.ServeConfig   the command's settings
engine.Engine        photo checks, cached person encodings, one generation at a time, per-request outputs
app.build_app        the page: person panels, layout editor, settings, results; the /generate API
"""
