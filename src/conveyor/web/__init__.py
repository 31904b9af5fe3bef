"""The web UI: server-rendered pages (Jinja2), plain CSS and a little JavaScript."""
