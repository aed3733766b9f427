"""Plugin discovery (entry points "osirix_py.plugins")."""
