"""The papers' experiments: suites of trainings (`suite`, `runner`; `work`, `jobs`, `worker`, `slurm` where
trainings run, each training once across suites; `results` their table), the propagation analysis (v2 sec. 3)
and the HTML report.

May import: errors, version, files, networks, data, runs, settings, weights, training.
"""
