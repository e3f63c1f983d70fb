"""Where the search meets nnU-Net: the search trainer and its checkpoint format, the trainers users name with ``-tr``,
the plans I/O, the export, the width fit, the host of IAC, the data split. Besides this subpackage only the IAC
network (which builds nnU-Net's planned U-Net as its host) and the CLI import nnunetv2."""
