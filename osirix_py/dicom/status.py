"""Named DIMSE status codes (PS3.7 Annex C, PS3.4 Annexes B and C).

The one place where the listener, the client side and the tests spell
status values: ``status.OUT_OF_RESOURCES_STORE`` rather than ``0xA700``.
:func:`describe` turns a code into words for logs and error messages.
"""

from __future__ import annotations

# --- general (PS3.7 C) -------------------------------------------------------
SUCCESS = 0x0000
PENDING = 0xFF00
#: Pending, with a warning that one or more optional keys were not supported
#: for matching (C-FIND).
PENDING_WARNING = 0xFF01
CANCEL = 0xFE00
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
DUPLICATE_INVOCATION = 0x0210
UNRECOGNIZED_OPERATION = 0x0211
MISTYPED_ARGUMENT = 0x0212

# --- storage (PS3.4 B.2.3) ---------------------------------------------------
#: Refused: out of resources (disk full).  Also C-FIND "Refused: out of resources".
OUT_OF_RESOURCES_STORE = 0xA700
OUT_OF_RESOURCES = OUT_OF_RESOURCES_STORE
#: Error: data set does not match SOP class (or the command's SOP Instance UID).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: cannot understand (0xC000 - 0xCFFF).
CANNOT_UNDERSTAND = 0xC000
WARNING_COERCION = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATASET_DOES_NOT_MATCH = 0xB007

# --- query / retrieve (PS3.4 C.4) -------------------------------------------
#: Refused: out of resources, unable to calculate number of matches (C-MOVE/C-GET).
OUT_OF_RESOURCES_MATCHES = 0xA701
#: Refused: out of resources, unable to perform sub-operations (C-MOVE/C-GET).
OUT_OF_RESOURCES_SUBOPS = 0xA702
#: Refused: move destination unknown.
MOVE_DESTINATION_UNKNOWN = 0xA801
#: Failed: identifier does not match SOP class (C-FIND, C-MOVE, C-GET).
IDENTIFIER_DOES_NOT_MATCH = 0xA900
#: Failed: unable to process (0xC000 - 0xCFFF); C-FIND/C-MOVE/C-GET.
UNABLE_TO_PROCESS = 0xC001
#: Warning: sub-operations complete, one or more failures or warnings.
WARNING_SUBOPS = 0xB000

_NAMES = {
    SUCCESS: "Success",
    PENDING: "Pending",
    PENDING_WARNING: "Pending (optional keys not supported)",
    CANCEL: "Cancelled",
    PROCESSING_FAILURE: "Processing failure",
    NO_SUCH_SOP_CLASS: "No such SOP class",
    SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    NOT_AUTHORIZED: "Not authorised",
    DUPLICATE_INVOCATION: "Duplicate invocation",
    UNRECOGNIZED_OPERATION: "Unrecognised operation",
    MISTYPED_ARGUMENT: "Mistyped argument",
    OUT_OF_RESOURCES: "Out of resources",
    OUT_OF_RESOURCES_MATCHES: "Out of resources: unable to calculate number of matches",
    OUT_OF_RESOURCES_SUBOPS: "Out of resources: unable to perform sub-operations",
    MOVE_DESTINATION_UNKNOWN: "Move destination unknown",
    IDENTIFIER_DOES_NOT_MATCH: "Identifier / data set does not match SOP class",
    WARNING_SUBOPS: "Sub-operations complete with failures or warnings (or coercion)",
    WARNING_ELEMENTS_DISCARDED: "Elements discarded",
    WARNING_DATASET_DOES_NOT_MATCH: "Data set does not match SOP class (warning)",
}


def is_success(code: int) -> bool:
    return code == SUCCESS


def is_pending(code: int) -> bool:
    return code in (PENDING, PENDING_WARNING)


def is_warning(code: int) -> bool:
    return code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF


def is_failure(code: int) -> bool:
    return not (is_success(code) or is_pending(code) or is_warning(code) or code == CANCEL)


def describe(code: int) -> str:
    """``0xA700 (Out of resources)``; ranges are named by their class."""
    name = _NAMES.get(code)
    if name is None:
        if 0xC000 <= code <= 0xCFFF:
            name = "Cannot understand / unable to process"
        elif 0xA700 <= code <= 0xA7FF:
            name = "Out of resources"
        elif 0xA900 <= code <= 0xA9FF:
            name = "Does not match SOP class"
        elif is_warning(code):
            name = "Warning"
        else:
            name = "Failure"
    return f"0x{code:04X} ({name})"
