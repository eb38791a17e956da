"""Training: devices and evaluation data (`setup`), one builder from a config to a ready trainer (`build`), the
loop (`trainer`), its start and resume (`entry`), the schedule, progress, stop decisions (`monitor`), evaluation,
processes (`distributed`), fast paths (`fast`), what the person watching sees (`reporting`) and the trackers.

May import: errors, version, files, networks, data, runs, settings, weights.
"""
