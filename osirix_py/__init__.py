"""osirix-py: an OsiriX-style DICOM workstation and mini-PACS."""

__version__ = "0.1.0"
