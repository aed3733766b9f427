"""The nodes table (remote DICOM locations): add, list, remove, look up.

The same table serves the listener (C-MOVE destinations, "accept only known
nodes"), the client side (query/retrieve/send) and the GUI's Locations.
Nodes listed in the configuration file are merged in at start-up
(:func:`sync_from_config`); they can be edited like any other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..config import ConfigError, NodeConfig, validate_ae_title
from ..db.engine import Database
from ..db.schema import nodes


class NodeError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    name: str
    ae_title: str
    host: str
    port: int
    retrieve_method: str = "move"
    tls: bool = False
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


def _validate(node: Node) -> Node:
    if not node.name or len(node.name) > 64:
        raise NodeError("node name must be 1 to 64 characters")
    try:
        validate_ae_title(node.ae_title)
    except ConfigError as exc:
        raise NodeError(str(exc)) from None
    if not (0 < int(node.port) < 65536):
        raise NodeError(f"port {node.port} out of range 1-65535")
    if not node.host:
        raise NodeError("host is required")
    if node.retrieve_method not in ("move", "get"):
        raise NodeError("retrieve method must be 'move' or 'get'")
    return node


def _row(r) -> Node:
    return Node(name=r.name, ae_title=r.ae_title, host=r.host, port=r.port,
                retrieve_method=r.retrieve_method, tls=bool(r.tls), description=r.description or "")


class NodeRepository:
    def __init__(self, db: Database):
        self.db = db

    def add(self, node: Node, *, replace: bool = False) -> Node:
        node = _validate(node)
        values = node.to_dict()
        with self.db.engine.begin() as conn:
            exists = conn.execute(select(nodes.c.id).where(nodes.c.name == node.name)).scalar()
            if exists is not None:
                if not replace:
                    raise NodeError(f"a node named {node.name!r} exists already")
                conn.execute(update(nodes).where(nodes.c.id == exists).values(**values))
            else:
                try:
                    conn.execute(nodes.insert().values(**values))
                except IntegrityError:
                    raise NodeError(f"a node named {node.name!r} exists already") from None
        return node

    def remove(self, name: str) -> None:
        with self.db.engine.begin() as conn:
            n = conn.execute(delete(nodes).where(nodes.c.name == name)).rowcount
        if not n:
            raise NodeError(f"no node named {name!r}")

    def list(self) -> list[Node]:
        with self.db.engine.connect() as conn:
            return [_row(r) for r in conn.execute(select(nodes).order_by(nodes.c.name))]

    def get(self, name: str) -> Node:
        with self.db.engine.connect() as conn:
            r = conn.execute(select(nodes).where(nodes.c.name == name)).first()
            if r is None:
                # Also accept the AE title, as users often type that.
                r = conn.execute(select(nodes).where(nodes.c.ae_title == name)).first()
        if r is None:
            raise NodeError(f"no node named {name!r}; see 'osirix-py nodes list'")
        return _row(r)

    def by_ae_title(self, ae_title: str) -> Node | None:
        """The node a calling AE / move destination names (exact AE title)."""
        with self.db.engine.connect() as conn:
            r = conn.execute(select(nodes).where(nodes.c.ae_title == ae_title.strip())
                             .order_by(nodes.c.id)).first()
        return _row(r) if r is not None else None

    def sync_from_config(self, configured: tuple[NodeConfig, ...]) -> None:
        for n in configured:
            self.add(Node(**asdict(n)), replace=True)
