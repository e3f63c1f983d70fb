"""Every discretiser: from searched architecture parameters to a fixed, feasible architecture (the DiNTS grid's
topology-guaranteed path decode in ``grid_path``, the cell rules of SCNAS and IAC in ``cell``)."""
