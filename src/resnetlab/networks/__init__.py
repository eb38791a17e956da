"""The networks: every variant of both papers is data (`spec.ResNetSpec`) built by one class (`net.ResNet`), with
the tables of v2's shortcut kinds (`shortcuts`) and activation placements (`units`), the papers' named nets
(`registry`), counts (`counting`), unit-by-unit tables (`describe`) and BN folding (`folding`).

May import: errors, version, files.
"""
