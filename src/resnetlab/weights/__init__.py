"""Weights in and out: what a path means (`resolve`), the formats read and loaded into a net (`formats`), our
checkpoints (`checkpoint`), the peers' layouts (`peers`), a trained net ready to use (`pretrained`) and written out
for others (`export`).

May import: errors, version, files, networks, data, runs, settings.
"""
