"""How resnetlab writes and reads any file: the one atomic writer (`atomic`: whole files or nothing, never a device
replaced, never an input overwritten), JSON of bounded nesting (`jsondoc`), and reading a file it did not write
(`reading`: regular files only, bounded size, `torch.load` of tensors and plain data only).

May import: errors, version.
"""
