"""Django database backends backed by poolkit's pools."""
