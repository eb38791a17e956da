"""Training: a config's resolution on this process (`setup`), the trainer's parts (`build`), the loop
(`trainer`), its start and resume (`entry`), the schedule, progress, stop decisions (`monitor`), evaluation,
processes (`distributed`), fast paths (`fast`), what the person watching sees (`reporting`) and the trackers.

May import: errors, version, files, networks, data, runs, settings, weights.
"""
