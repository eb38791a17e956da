"""A run's settings, declared once: the config (`config`: defaults, recipe files, `--set` overrides, validated
when built), `run.device` as a torch device (`device`), `SECTION.KEY=VALUE` text (`overrides`) and the
trackers' settings (`trackers`).

May import: errors, version, files, networks, data, runs.
"""
