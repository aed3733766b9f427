"""The application core: archive (store/import/find/delete), change feed, jobs."""
