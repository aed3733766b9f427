"""DICOM knowledge: the attribute table, headers, pixels, geometry, statuses."""
