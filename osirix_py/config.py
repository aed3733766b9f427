"""Typed settings from a TOML file.

Where the settings come from, first match wins:

1. ``--config FILE`` on the command line;
2. ``<data dir>/config.toml`` when a data dir is given by ``--data-dir DIR`` or
   the environment variable ``OSIRIX_PY_HOME`` (so that one folder holds a
   whole, self-contained installation: tests and second instances use this);
3. ``config.toml`` in the user's config dir (platformdirs:
   ``~/.config/osirix-py`` on Linux, ``~/Library/Application Support/osirix-py``
   on macOS, ``%LOCALAPPDATA%\\osirix-py`` on Windows).

A missing file means defaults.  Unknown keys are reported, not ignored
silently.  ``osirix-py config show`` prints the effective settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import platformdirs

APP_NAME = "osirix-py"
ENV_HOME = "OSIRIX_PY_HOME"
DEFAULT_AE_TITLE = "OSIRIXPY"


class ConfigError(ValueError):
    """The configuration file is unreadable or holds an invalid value."""


@dataclass(frozen=True)
class NodeConfig:
    """A remote DICOM node (PACS, modality, workstation)."""

    name: str
    ae_title: str
    host: str
    port: int
    retrieve_method: str = "move"  # "move" or "get"
    tls: bool = False
    description: str = ""


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str = DEFAULT_AE_TITLE
    port: int = 11112
    bind_address: str = "0.0.0.0"
    enabled: bool = True
    #: Reject associations whose called AE is not our AE title.
    require_called_ae: bool = False
    #: Accept associations only from calling AEs listed in the nodes table.
    accept_only_known_nodes: bool = False
    #: Also check that a known node connects from its configured host.
    check_node_host: bool = False
    max_associations: int = 32
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 0  # 0: unlimited (pynetdicom default negotiation)


@dataclass(frozen=True)
class HttpConfig:
    port: int = 8080
    bind_address: str = "127.0.0.1"
    enabled: bool = True
    #: Users must log in (password, API token or HTTP Basic) for everything but
    #: /testdbalive.  May be false only on a loopback bind address.
    auth: bool = True
    #: HTTPS when both are set: PEM certificate (chain) and its private key.
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: Lifetime of a login session of the HTML5 viewer (hours).
    session_hours: float = 12.0


def is_loopback(address: str) -> bool:
    """Whether *address* (a bind address) only accepts connections from this machine."""
    import ipaddress

    a = (address or "").strip().strip("[]")
    if a.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


def validate_http(http: HttpConfig) -> HttpConfig:
    """Refuse settings that would expose the web server without authentication."""
    if http.enabled and not http.auth and not is_loopback(http.bind_address):
        raise ConfigError(
            f"[http] auth = false is only allowed on a loopback bind address, not "
            f"{http.bind_address!r}: the web server would serve the archive to anyone who can "
            "reach it.  Set auth = true (and add users with 'osirix-py users add'), or bind to "
            "127.0.0.1")
    if bool(http.ssl_certfile) != bool(http.ssl_keyfile):
        raise ConfigError("[http] HTTPS needs both ssl_certfile and ssl_keyfile")
    if http.session_hours <= 0:
        raise ConfigError("[http] session_hours must be positive")
    return http


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    #: SQLAlchemy URL; empty means SQLite in the data dir.
    database_url: str = ""
    #: What to do when an instance with a known SOP Instance UID arrives again.
    duplicate_policy: str = "keep"  # "keep" or "replace"
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    nodes: tuple[NodeConfig, ...] = ()
    #: Seconds without a new instance after which a study is "stable".
    stable_study_seconds: float = 60.0
    #: Client-side (SCU) timeouts.
    connect_timeout: float = 10.0
    config_file: Path | None = None

    # -- derived paths ----------------------------------------------------
    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "osirix-py.sqlite"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.database_path.resolve()}"

    def with_overrides(self, **kw) -> "Settings":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["config_file"] = str(self.config_file) if self.config_file else None
        d["effective_database_url"] = _hide_password(self.effective_database_url)
        d["database_url"] = _hide_password(self.database_url)
        d["nodes"] = [asdict(n) for n in self.nodes]
        return d


def _hide_password(url: str) -> str:
    if not url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def _check_keys(section: str, data: dict, cls) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in [{section}]: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def _typed(section: str, data: dict, cls):
    _check_keys(section, data, cls)
    out = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        default = f.default
        try:
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise TypeError
            elif isinstance(default, int):
                v = int(v)
            elif isinstance(default, float):
                v = float(v)
            elif isinstance(default, str):
                v = str(v)
        except (TypeError, ValueError):
            raise ConfigError(f"[{section}] {f.name} = {v!r}: expected {type(default).__name__}") from None
        out[f.name] = v
    return cls(**out)


def validate_ae_title(ae: str) -> str:
    ae = (ae or "").strip()
    if not ae or len(ae) > 16 or "\\" in ae or not ae.isascii() or any(ord(c) < 32 for c in ae):
        raise ConfigError(f"invalid AE title {ae!r}: 1 to 16 ASCII characters, no backslash")
    return ae


def _node(data: dict, i: int) -> NodeConfig:
    try:
        n = _typed(f"nodes #{i + 1}", data, NodeConfig)
    except TypeError as exc:
        raise ConfigError(f"[[nodes]] #{i + 1}: {exc}") from None
    validate_ae_title(n.ae_title)
    if n.retrieve_method not in ("move", "get"):
        raise ConfigError(f"node {n.name}: retrieve_method must be 'move' or 'get'")
    return n


def load_settings(
    *,
    data_dir: str | os.PathLike | None = None,
    config_file: str | os.PathLike | None = None,
    environ: dict | None = None,
) -> Settings:
    """Build the effective settings (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    home = data_dir or env.get(ENV_HOME) or None
    if config_file:
        cfg_path: Path | None = Path(config_file).expanduser()
        if not cfg_path.is_file():
            raise ConfigError(f"configuration file {cfg_path} does not exist")
    elif home:
        cfg_path = Path(home).expanduser() / "config.toml"
    else:
        cfg_path = default_config_file()

    raw: dict = {}
    if cfg_path is not None and cfg_path.is_file():
        try:
            with open(cfg_path, "rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {cfg_path}: {exc.strerror}") from None
    else:
        cfg_path = cfg_path if (cfg_path and cfg_path.is_file()) else None

    top_known = {"data_dir", "database_url", "duplicate_policy", "listener", "http", "nodes",
                 "stable_study_seconds", "connect_timeout"}
    unknown = set(raw) - top_known
    if unknown:
        raise ConfigError(f"{cfg_path}: unknown setting(s) {', '.join(sorted(unknown))}")

    if home:
        ddir = Path(home).expanduser()
    elif raw.get("data_dir"):
        ddir = Path(str(raw["data_dir"])).expanduser()
    else:
        ddir = default_data_dir()

    listener = _typed("listener", raw.get("listener", {}), ListenerConfig)
    validate_ae_title(listener.ae_title)
    http = validate_http(_typed("http", raw.get("http", {}), HttpConfig))
    nodes = tuple(_node(n, i) for i, n in enumerate(raw.get("nodes", [])))
    policy = str(raw.get("duplicate_policy", "keep"))
    if policy not in ("keep", "replace"):
        raise ConfigError(f"duplicate_policy must be 'keep' or 'replace', not {policy!r}")
    try:
        stable = float(raw.get("stable_study_seconds", 60.0))
        connect_timeout = float(raw.get("connect_timeout", 10.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from None
    return Settings(
        data_dir=ddir.absolute(),
        database_url=str(raw.get("database_url", "")),
        duplicate_policy=policy,
        listener=listener,
        http=http,
        nodes=nodes,
        stable_study_seconds=stable,
        connect_timeout=connect_timeout,
        config_file=cfg_path,
    )


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(settings: Settings) -> str:
    """The settings as a TOML document (what ``config show --toml`` prints)."""
    lines = [
        f"data_dir = {_toml_value(settings.data_dir)}",
        f"database_url = {_toml_value(settings.database_url)}",
        f"duplicate_policy = {_toml_value(settings.duplicate_policy)}",
        f"stable_study_seconds = {_toml_value(settings.stable_study_seconds)}",
        f"connect_timeout = {_toml_value(settings.connect_timeout)}",
        "",
        "[listener]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(settings.listener).items()]
    lines += ["", "[http]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(settings.http).items()]
    for n in settings.nodes:
        lines += ["", "[[nodes]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(n).items()]
    return "\n".join(lines) + "\n"
