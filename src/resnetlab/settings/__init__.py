"""A run's settings, declared once: the config (`config`: defaults, recipe files, `--set` overrides, validated
when built), `SECTION.KEY=VALUE` text (`overrides`) and the trackers' settings (`trackers`).

May import: errors, version, files, networks, data, runs.
"""
