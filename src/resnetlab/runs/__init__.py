"""The run directory, the unit of output: its layout, files and lock (`directory`), the shapes of what a run writes
and everything else reads (`records`: metrics rows, summary.json), and the figures drawn from them (`plots`).

May import: errors, version, files.
"""
