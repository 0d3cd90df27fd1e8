"""The one config file (TOML, `/etc/dgdo/dgdo.toml`), and every `dgdo` setting declared once.

    [engine]   dgdo-engine's settings: the engine reads and checks them (`dgdo-engine --print-config`)
    [sidecar]  `dgdo sidecar` and the sidecar of `dgdo run`
    [run]      `dgdo run` only
    [auth]     where the JWT secret comes from (never the secret itself)

A key is its flag without `--` and with `_` for `-` (`--max-paused-s 5` is `max_paused_s = 5.0`).
Each `Setting` below gives a setting's table, type, default, range or choices and help; the
command-line flags (`add_flags`) and the file's checks (`load`) are both derived from it, so
they cannot disagree. A flag given on the command line wins over the file, the file over the
default. docs/dgdo.toml lists every setting with its default (tests/test_config.py keeps it so).

Every problem is a `ConfigError` whose message is one line naming the file and the key:
`/etc/dgdo/dgdo.toml: [sidecar] port: must be between 0 and 65535, not 99999`. Pure: no I/O but
reading the file.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.engine.link import ENGINE_TIMEOUT_S, REPLY_SPIN_US
from sidecar.session.limits import MAX_QUEUED

TABLES = ("engine", "sidecar", "run", "auth")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_PATH = Path("/etc/dgdo/dgdo.toml")  # what the systemd units pass to --config


class ConfigError(Exception):
    """A bad file or value; str() is the one line to print."""


@dataclass(frozen=True, slots=True)
class Setting:
    table: str
    key: str
    kind: type  # int | float | str | bool | Path
    default: Any  # None: unset (optional, or the default depends on the machine: see help)
    help: str
    lo: float | None = None
    hi: float | None = None
    above: bool = False  # lo itself is out of range (> lo, not >= lo)
    choices: tuple[str, ...] = ()  # matched without regard to case, kept as written here
    commands: tuple[str, ...] = ("run", "sidecar")  # which `dgdo` commands take it as a flag
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value as this setting holds it, from a TOML value. Raises ValueError(why)."""
        kind = self.kind
        if isinstance(value, bool) and kind is not bool:  # TOML true is not 1
            raise ValueError(f"must be {_kind_name(kind)}, not a boolean")
        if kind is float and isinstance(value, int | float):
            value = float(value)
        elif kind is Path and isinstance(value, str):
            if not value:
                raise ValueError("must be a path, not empty")
            value = Path(value)
        elif not isinstance(value, kind):
            raise ValueError(f"must be {_kind_name(kind)}, not {_toml_type(value)}")
        return self._in_range(value)

    def parse(self, text: str) -> Any:
        """The value from the command line's text. Raises ValueError(why)."""
        if self.kind is int:
            try:
                number = int(text)
            except ValueError:
                raise ValueError(f"must be an integer, not {text!r}") from None
            return self._in_range(number)
        if self.kind is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"must be a number, not {text!r}") from None
            return self._in_range(value)
        if self.kind is Path:
            return self.check(text)
        return self._in_range(text)

    def _in_range(self, value: Any) -> Any:
        if self.choices:
            for choice in self.choices:
                if str(value).upper() == choice.upper():
                    return choice
            raise ValueError(f"must be one of {', '.join(self.choices)}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, not {value}")
        lo, hi = self.lo, self.hi
        if isinstance(value, int | float) and not (
                (lo is None or value > lo or (value == lo and not self.above)) and (hi is None or value <= hi)):
            if lo is not None and hi is not None:
                raise ValueError(f"must be between {_num(lo)} and {_num(hi)}, not {_num(value)}")
            raise ValueError(f"must be {'>' if self.above else '>='} {_num(lo)}, not {_num(value)}")
        return value


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}[kind]


def _toml_type(value: Any) -> str:
    for kind, name in ((str, "a string"), (int, "an integer"), (float, "a float"), (dict, "a table"),
                       (list, "an array")):
        if isinstance(value, kind):
            return name
    return "a date or time"


def _s(key: str, kind: type, default: Any, help_: str, **kw: Any) -> Setting:
    return Setting("sidecar", key, kind, default, help_, **kw)


SETTINGS: tuple[Setting, ...] = (
    _s("host", str, "127.0.0.1", "address to listen on (0.0.0.0: every interface)"),
    _s("port", int, 8765, "TCP port (0: any free one); workers on one host share it", lo=0, hi=65535),
    _s("worker", int, 1, "sidecar worker id, 1-65535, one per worker on a host (systemd: the instance, %i)",
       lo=1, hi=65535),
    _s("control", str, None, "the engine's control socket: a path, or @NAME (abstract); dgdo sidecar only "
                             "(dgdo run starts its own engine)", commands=("sidecar",), metavar="PATH"),
    _s("status_interval", float, 1.0, "seconds between status lines on stdout; 0 = off", lo=0),
    _s("log_level", str, "INFO", "the least severe log lines written", choices=LOG_LEVELS),
    _s("ping_idle_s", float, 30.0, "ping a client silent for this long", lo=0, above=True),
    _s("ping_reply_s", float, 15.0, "drop a client whose pong is this late", lo=0, above=True),
    _s("positions_per_s", float, 10.0, "positions a connection may send, sustained", lo=0, above=True),
    _s("positions_burst", float, 20.0, "... and in a burst", lo=1),
    _s("messages_per_s", float, 2000.0, "messages of any type, sustained", lo=0, above=True),
    _s("messages_burst", float, 2000.0, "... and in a burst", lo=1),
    _s("max_paused_s", float, 10.0, "close (4008) a client whose write buffer stays full this long",
       lo=0, above=True),
    _s("max_queued", int, MAX_QUEUED, "messages a paused (not reading) client may owe before it is closed "
                                      "with 4008", lo=1),
    _s("reply_spin_us", float, REPLY_SPIN_US, "at most this many µs to poll (yielding the CPU) for the engine's "
                                              "answer to a command, or to a position whose passenger is on this "
                                              "worker, before parking; the spin lasts what recent answers took "
                                              "(0 = never spin; README 'Idle strategy')", lo=0),
    _s("idle_spin_us", float, None, "after work, poll the engine's ring this long before parking on its "
                                    "doorbell: fewer wake-ups, more CPU (default: 0 with 2 cores or fewer, "
                                    "100 with more; README 'Idle strategy')", lo=0),
    _s("engine_timeout_s", float, ENGINE_TIMEOUT_S, "an engine whose heartbeat is older than this is "
                                                    "unavailable: /healthz 503, commands refused with "
                                                    "engine_unavailable until it beats again", lo=0, above=True),
    _s("max_connections", int, None, "WebSocket connections served at once; more are refused with 503 "
                                     "before the upgrade (default: from the open-files limit)", lo=1),
    _s("tls_cert", Path, None, "TLS certificate chain (PEM): serve wss:// and https:// (with tls_key)",
       metavar="PATH"),
    _s("tls_key", Path, None, "TLS private key (PEM) for tls_cert", metavar="PATH"),
    _s("engine_metrics_worker", int, 1, "the worker whose /metrics carries the engine's figures (drivers, "
                                        "orders, offer decisions), so that a sum over workers counts them once; "
                                        "0: none", lo=0, hi=65535, metavar="ID"),
    _s("metrics_port", int, None, "a base port: worker N also serves /metrics and /healthz (only) on port "
                                  "metrics_port + N - 1 of host, its own when workers share port (0: any free "
                                  "one for each; default: none)", lo=0, hi=65535),
    _s("metrics_host", str, None, "the address the metrics port listens on, e.g. one only the scraper "
                                  "reaches (default: host)"),
    _s("private_metrics", bool, False, "serve /metrics on the metrics port only: the public port answers "
                                       "404 for it (needs metrics_port)"),

    Setting("run", "demo", int, 20, "simulated drivers (0: none, as --no-demo)", lo=0, commands=("run",),
            metavar="N"),
    Setting("run", "workers", int, 1, "sidecar workers sharing the port", lo=1, hi=64, commands=("run",),
            metavar="N"),
    Setting("run", "state_dir", Path, None, "the engine's journal and snapshots (default "
                                            "$XDG_STATE_HOME/dgdo/run-PORT, else ~/.local/state/dgdo/run-PORT)",
            commands=("run",), metavar="DIR"),
    Setting("run", "no_journal", bool, False, "run the engine without a journal (benchmarks; nothing survives "
                                              "a restart)", commands=("run",)),
    Setting("run", "instance", str, None, "engine instance name, labels its ring memfds (default run<pid>)",
            commands=("run",), metavar="NAME"),

    Setting("auth", "secret_file", Path, None, "a file holding the JWT HS256 secret (at least 32 bytes). "
                                               "Under systemd leave it unset: the unit's LoadCredential= "
                                               "hands the secret over", metavar="PATH"),
    Setting("auth", "insecure_no_auth", bool, False, "accept connections without a token: a trusted test "
                                                     "network only"),
)

BY_TABLE: dict[str, dict[str, Setting]] = {t: {s.key: s for s in SETTINGS if s.table == t} for t in TABLES}


def _argparse_type(s: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return s.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = s.kind.__name__  # what argparse names in "invalid <type> value"
    return parse


def help_text(s: Setting) -> str:
    shown = s.default if s.default is None or s.kind is not str else f'"{s.default}"'
    return s.help if s.default is None or s.kind is bool else f"{s.help} (default {shown})"


def _metavar(s: Setting) -> str:
    if s.metavar or s.choices:
        return s.metavar or "|".join(s.choices)
    for suffix in ("_per_s", "_s", "_us", "_m"):
        if suffix == "_per_s" and s.key.endswith(suffix):
            return "RATE"
        if s.key.endswith(suffix):
            return suffix[1:].upper()
    return {int: "N", float: "X"}.get(s.kind, s.key.upper())


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the settings `command` takes. Every default is None: `resolve` fills in the
    file's value, else the setting's default, so a flag left out never hides the file.

    A flag the parser already has (written by hand) is left as it is."""
    for s in SETTINGS:
        if command not in s.commands:
            continue
        kw: dict[str, Any] = {"dest": s.key, "default": None, "help": help_text(s).replace("%", "%%")}
        if s.kind is bool:
            kw.update(action="store_const", const=True)
        else:
            kw.update(type=_argparse_type(s), metavar=_metavar(s))
        with contextlib.suppress(argparse.ArgumentError):
            parser.add_argument(s.flag, **kw)


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The file's tables, every key of [sidecar], [run] and [auth] checked ([engine]'s are the
    engine's to check); a relative path (tls_cert, secret_file...) taken from the file's directory.
    Raises ConfigError."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: bad TOML: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: bad TOML: {e}") from None  # "... (at line 3, column 7)"
    out: dict[str, dict[str, Any]] = {}
    for table, values in doc.items():
        if table not in TABLES:
            raise ConfigError(f"{path}: unknown table [{table}] (tables: {', '.join(TABLES)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {table}: must be a table ([{table}])")
        out[table] = dict(values) if table == "engine" else _checked(path, table, values)
    return out


def _checked(path: Path, table: str, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        s = BY_TABLE[table].get(key)
        if s is None:
            raise ConfigError(f"{path}: [{table}] {key}: unknown setting{_did_you_mean(table, key)}")
        try:
            out[key] = value = s.check(value)
        except ValueError as e:
            raise ConfigError(f"{path}: [{table}] {key}: {e}") from None
        if isinstance(value, Path) and not value.is_absolute():
            # Relative to the file, not to wherever the command was started: the same file read by
            # `dgdo run`, a systemd unit (cwd /) or a worker names the same files.
            out[key] = path.absolute().parent / value
    return out


def _did_you_mean(table: str, key: str) -> str:
    if table == "auth" and key == "secret":
        return " (the secret is never in this file: secret_file names the file that holds it)"
    alias = key.replace("-", "_")
    for t in TABLES[1:]:
        if alias in BY_TABLE[t] and (t, alias) != (table, key):
            return f" (did you mean [{t}] {alias}?)"
    return " (docs/dgdo.toml lists them)"


def resolve(args: argparse.Namespace, command: str, file: dict[str, dict[str, Any]] | None) -> set[str]:
    """Fills every setting `command` takes into args: the flag's value when given, else the
    file's, else the default. Returns the keys a flag gave (a secret file from a flag wins over
    the environment, one from the file does not)."""
    from_flags = set()
    for s in SETTINGS:
        if command not in s.commands:
            continue
        if getattr(args, s.key, None) is not None:
            from_flags.add(s.key)
            continue
        value = (file or {}).get(s.table, {}).get(s.key, s.default)
        setattr(args, s.key, value)
    return from_flags


def settings_of(tables: Iterable[str]) -> list[Setting]:
    return [s for s in SETTINGS if s.table in tables]
