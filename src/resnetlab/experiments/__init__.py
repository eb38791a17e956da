"""The papers' experiments: suites of trainings (`suite` what a suite is, `runner` one call's work, `work` how
workers share it, `members` / `jobs` / `slurm` / `worker` where trainings run, `trainings` one training once
across suites, `results` their table), the propagation analysis (v2 sec. 3) and the HTML report.

May import: errors, version, files, networks, data, runs, settings, weights, training.
"""
