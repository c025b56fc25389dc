"""Operating the pools: the deployment around them (``POOLKIT["DEPLOYMENT"]``), what the
servers say (limits, role, lag, connections), pool sizing arithmetic and the budget plan."""
