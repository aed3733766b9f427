"""An OpenAPI 3.0 description generated from the app's routes and their docstrings."""

from __future__ import annotations

import re

from starlette.routing import Mount, Route

from .. import __version__

_PARAM = re.compile(r"{(\w+)}")
_ERR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}}}}


def _walk(routes, prefix: str = ""):
    for r in routes:
        if isinstance(r, Mount):
            yield from _walk(r.routes, prefix + r.path)
        elif isinstance(r, Route):
            yield prefix + r.path, r


def openapi_spec(routes) -> dict:
    paths: dict[str, dict] = {}
    for path, route in _walk(routes):
        doc = (route.endpoint.__doc__ or route.endpoint.__name__.replace("_", " ")).strip()
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            op = {
                "summary": doc.splitlines()[0],
                "operationId": f"{method.lower()}_{route.endpoint.__name__}_{len(paths)}",
                "tags": [path.strip("/").split("/")[0] or "root"],
                "parameters": [{"name": p, "in": "path", "required": True,
                                "schema": {"type": "string"}} for p in _PARAM.findall(path)],
                "responses": {"200": {"description": "OK"}, "400": _ERR, "404": _ERR},
            }
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "osirix-py", "version": __version__,
                 "description": "REST, DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and WADO-URI. "
                                "List endpoints take DICOM matching keys as query parameters."},
        "paths": dict(sorted(paths.items())),
    }
