"""The networks: every variant of both papers is data (`spec.ResNetSpec`), built by one class (`net.ResNet`).

`shortcuts` is the table of v2's shortcut kinds and `units` the table of its activation placements (fig. 4);
`registry` names the papers' nets; `counting` counts parameters and multiply-adds; `describe` shows a net unit
by unit; `folding` folds batch norm into convolutions for evaluation and export.

May import: errors, version, files.
"""
