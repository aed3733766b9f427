"""Suite-wide fixtures and guards.

pydicom's test-file helpers try to download files that the installed
``pydicom-data`` package does not carry; this machine (and CI) has no network
for that, and a download attempt hangs in retries.  The suite uses only the
files that are installed: downloads are disabled here, once, for every test.
"""

from __future__ import annotations

import pydicom.data.data_manager as _dm


def _no_download(name, *args, **kwargs):
    raise RuntimeError(f"pydicom test file {name} is not installed (downloads are disabled)")


_dm.data_path_with_download = _no_download
