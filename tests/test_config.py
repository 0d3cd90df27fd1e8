"""The one config file (docs/dgdo.toml) as an operator uses it: real `dgdo` and `dgdo-engine`
processes given `--config`; every setting documented with the default the code has; every bad
file, key or value one line naming it, and a non-zero exit; flags over the file; the JWT secret
of at least 32 bytes from wherever it comes; and what `dgdo run` prints to get going."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from conftest import ENGINE, JWT_SECRET, ROOT, LineReader, new_state_dir, stack_env
from websockets.exceptions import InvalidStatus
from wsclient import AppClient

from sidecar.shell import config, jwt_secret
from sidecar.wire import auth

DOCS = ROOT / "docs" / "dgdo.toml"
UNITS = ROOT / "systemd"
COMMENTED = re.compile(r"^# ?([a-z][a-z0-9_]*) = ", re.M)


def dgdo(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (auth.ENV_SECRET, "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINE), *args], capture_output=True, text=True, timeout=30)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def table_text(text: str, table: str) -> str:
    """The lines of one [table] of a TOML text (comments included)."""
    m = re.search(rf"^\[{table}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert m, f"no [{table}]"
    return m.group(1)


def write(tmp_path: Path, text: str, name: str = "dgdo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- docs/dgdo.toml: every setting, at the code's default ------------------------------------


def test_docs_list_every_engine_setting_at_the_engines_default() -> None:
    printed = engine("--print-config")
    assert printed.returncode == 0, printed.stderr
    code_set = tomllib.loads(printed.stdout)["engine"]
    code_unset = set(COMMENTED.findall(printed.stdout))
    docs = DOCS.read_text()
    assert tomllib.loads(docs)["engine"] == code_set
    assert set(COMMENTED.findall(table_text(docs, "engine"))) == code_unset
    assert {"control", "state_dir", "spin_us"} <= code_unset and "radius_m" in code_set


def test_docs_list_every_dgdo_setting_at_its_default() -> None:
    docs = DOCS.read_text()
    parsed = tomllib.loads(docs)
    for table in ("sidecar", "run", "auth"):
        declared = config.BY_TABLE[table]
        set_in_docs = parsed[table]
        assert set(set_in_docs) == {k for k, s in declared.items() if s.default is not None}, table
        for key, value in set_in_docs.items():
            assert declared[key].check(value) == declared[key].default, f"[{table}] {key}"
        commented = set(COMMENTED.findall(table_text(docs, table)))
        assert commented == {k for k, s in declared.items() if s.default is None}, table
    # The settings other branches of issue 11 use, under their agreed names.
    assert {"max_connections", "tls_cert", "tls_key"} <= set(config.BY_TABLE["sidecar"])
    assert "workers" in config.BY_TABLE["run"] and "secret_file" in config.BY_TABLE["auth"]


def test_docs_file_is_accepted_by_both_programs(tmp_path: Path) -> None:
    assert engine("--config", str(DOCS), "--print-config").returncode == 0
    assert config.load(DOCS)["sidecar"]["port"] == 8765
    out = dgdo("sidecar", "--config", str(DOCS), "--control", "@x", "--port", "99999")  # parsed, then the flag
    assert "--port: must be between 0 and 65535" in one_line(out.stderr)


def test_every_setting_is_a_flag_of_its_commands() -> None:
    helps = {cmd: dgdo(cmd, "--help").stdout for cmd in ("run", "sidecar")}
    for s in config.SETTINGS:
        for cmd in ("run", "sidecar"):
            assert (s.flag in helps[cmd]) == (cmd in s.commands), (s.flag, cmd)


def test_units_read_the_config_file() -> None:
    for unit in ("dgdo-engine.service", "dgdo-sidecar@.service"):
        exec_start = next(line for line in (UNITS / unit).read_text().splitlines() if line.startswith("ExecStart="))
        assert f"--config {config.DEFAULT_PATH}" in exec_start, unit
        assert "DGDO_PORT" not in exec_start  # host and port come from [sidecar], not the environment


# ---- the engine: [engine] from the file, flags over it ---------------------------------------


def test_engine_reads_its_table_and_flags_override_it(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[engine]\nradius_m = 2500\nmatching = "batched"\nfsync = "batch"\n'
                          '[sidecar]\nport = 9000\n[auth]\nsecret_file = "/nowhere"\n')
    out = engine("--config", str(cfg), "--radius-m", "2000", "--print-config")
    assert out.returncode == 0, out.stderr
    printed = tomllib.loads(out.stdout)["engine"]
    assert printed["radius_m"] == 2000.0 and printed["matching"] == "batched" and printed["fsync"] == "batch"
    assert printed["wide_radius_m"] == 7000.0  # the rest at their defaults


def test_engine_started_with_the_config_file_serves_on_its_control_socket(tmp_path: Path) -> None:
    name = f"@dgdo-test-cfg-{os.getpid()}"
    cfg = write(tmp_path, f'[engine]\ncontrol = "{name}"\ninstance = "cfgtest"\n')
    proc = subprocess.Popen([str(ENGINE), "--config", str(cfg), "--die-with-parent", str(os.getpid())],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"dgdo-engine ready control={name} ")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# ---- bad files, keys and values: one line naming them, non-zero exit -------------------------

BAD_FILES = [
    ("[sidecar]\nport = 99999\n", "[sidecar] port: must be between 0 and 65535, not 99999"),
    ('[sidecar]\nport = "8765"\n', "[sidecar] port: must be an integer, not a string"),
    ("[sidecar]\nping_idle_s = 0\n", "[sidecar] ping_idle_s: must be > 0, not 0"),
    ("[sidecar]\nmax_paused_s = true\n", "[sidecar] max_paused_s: must be a number, not a boolean"),
    ('[sidecar]\nlog_level = "verbose"\n', "[sidecar] log_level: must be one of DEBUG, INFO, WARNING"),
    ("[sidecar]\ncolour = 1\n", "[sidecar] colour: unknown setting"),
    ("[sidecar]\nmax-queued = 1\n", "[sidecar] max-queued: unknown setting (did you mean [sidecar] max_queued?)"),
    ("[run]\nport = 1\n", "[run] port: unknown setting (did you mean [sidecar] port?)"),
    ("[run]\nworkers = 0\n", "[run] workers: must be between 1 and 64, not 0"),
    ('[auth]\nsecret = "hunter2"\n', "[auth] secret: unknown setting (the secret is never in this file"),
    ('[auth]\nsecret_file = ""\n', "[auth] secret_file: must be a path, not empty"),
    ("[sidecra]\nport = 1\n", "unknown table [sidecra]"),
    ("sidecar = 1\n", "sidecar: must be a table"),
    ("[sidecar]\nport = \n", "bad TOML: "),
]


@pytest.mark.parametrize(("text", "says"), BAD_FILES)
def test_a_bad_file_is_one_line_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    cfg = write(tmp_path, text)
    for cmd in (("sidecar", "--control", "@x"), ("run", "--no-demo"), ("token", "--role", "driver", "--sub", "d1")):
        out = dgdo(*cmd, "--config", str(cfg), env={auth.ENV_SECRET: JWT_SECRET})
        line = one_line(out.stderr)
        assert out.returncode == 2 and line.startswith(f"dgdo: {cfg}: ") and says in line, (cmd, line)


def test_a_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[sidecar]\nhost = "0.0.0.0"\nport 8765\n')
    line = one_line(dgdo("sidecar", "--control", "@x", "--config", str(cfg)).stderr)
    assert re.fullmatch(rf"dgdo: {re.escape(str(cfg))}: bad TOML: .*\(at line 3, column \d+\)", line), line
    line = one_line(engine("--config", str(cfg), "--print-config").stderr)
    assert re.match(rf"dgdo-engine: {re.escape(str(cfg))}: bad TOML: .*\(at line 3, column \d+\)", line), line


@pytest.mark.parametrize(("text", "says"), [
    ("[engine]\nradius_m = -1\n", "[engine] radius_m: must be a number > 0, not -1"),
    ("[engine]\ncolour = 1\n", "[engine] colour: unknown setting"),
    ('[engine]\ntick_ms = "fast"\n', "[engine] tick_ms: must be an integer, not a string"),
    ('[engine]\nmatching = "greedyy"\n', '[engine] matching: must be one of greedy, batched, not "greedyy"'),
    ("[enigne]\n", "unknown table [enigne]"),
])
def test_a_bad_engine_table_is_the_engines_one_line(tmp_path: Path, text: str, says: str) -> None:
    cfg = write(tmp_path, text)
    out = engine("--config", str(cfg), "--control", "@x")
    assert out.returncode == 2 and f"dgdo-engine: {cfg}: {says}" in one_line(out.stderr)
    # `dgdo run` hands the file to its engine: the engine's line, before anything starts or is created.
    state = tmp_path / "xdg"
    out = dgdo("run", "--no-demo", "--config", str(cfg), env={auth.ENV_SECRET: JWT_SECRET,
                                                                "XDG_STATE_HOME": str(state)})
    assert out.returncode == 2 and says in one_line(out.stderr)
    assert out.stdout == "" and not state.exists()


def test_an_unreadable_config_file_is_one_line(tmp_path: Path) -> None:
    for path, why in ((tmp_path / "missing.toml", "No such file or directory"), (tmp_path, "Is a directory")):
        out = dgdo("sidecar", "--control", "@x", "--config", str(path))
        assert out.returncode == 2 and one_line(out.stderr) == f"dgdo: cannot read {path}: {why}"
        out = engine("--control", "@x", "--config", str(path))
        assert out.returncode == 2 and f"dgdo-engine: cannot read {path}: {why}" in one_line(out.stderr)
    (tmp_path / "latin1.toml").write_bytes(b"[sidecar]\nhost = \"caf\xe9\"\n")
    out = dgdo("sidecar", "--control", "@x", "--config", str(tmp_path / "latin1.toml"))
    assert out.returncode == 2 and "not UTF-8" in one_line(out.stderr)


def test_no_journal_and_an_engine_state_dir_in_the_file_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[engine]\nstate_dir = "/var/lib/dgdo"\n')
    out = dgdo("run", "--no-journal", "--config", str(cfg), env={auth.ENV_SECRET: JWT_SECRET})
    assert out.returncode == 1 and "--no-journal, but" in one_line(out.stderr)


# ---- flags over the file, with a real sidecar ------------------------------------------------


def test_the_file_configures_the_sidecar_and_a_flag_overrides_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write(tmp_path, f'[sidecar]\nport = {port}\ncontrol = "@dgdo-test-cfg-none"\nstatus_interval = 0.0\n')
        # The file's port (taken): the sidecar says so in one line.
        out = dgdo("sidecar", "--config", str(cfg), env={auth.ENV_SECRET: JWT_SECRET})
        assert out.returncode == 1
        assert one_line(out.stderr) == f"dgdo: cannot listen on 127.0.0.1:{port}: Address already in use"
        # The flag wins over the file: any free port; the file's control socket is used.
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", "sidecar", "--config", str(cfg), "--port", "0"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=stack_env())
        try:
            assert proc.stdout is not None
            line = LineReader(proc.stdout).wait_for(r"listening on ws://127\.0\.0\.1:(\d+) \(engine control (\S+)\)")
            assert int(line.group(1)) != port and line.group(2) == "@dgdo-test-cfg-none"
        finally:
            proc.terminate()
            assert proc.wait(20) == 0


# ---- the JWT secret: at least 32 bytes, from wherever it comes --------------------------------

SHORT = "x" * 31


def test_a_short_secret_is_refused_from_every_source(tmp_path: Path) -> None:
    write(tmp_path, SHORT + "\n", jwt_secret.CREDENTIAL_SECRET)
    cfg = write(tmp_path, f'[auth]\nsecret_file = "{tmp_path / jwt_secret.CREDENTIAL_SECRET}"\n')
    says = "is 31 bytes; at least 32 are needed (make one: head -c 32 /dev/urandom | base64)"
    for args, env in (
        (("sidecar", "--control", "@x"), {auth.ENV_SECRET: SHORT}),
        (("sidecar", "--control", "@x"), {"CREDENTIALS_DIRECTORY": str(tmp_path)}),
        (("sidecar", "--control", "@x", "--config", str(cfg)), {}),
        (("sidecar", "--control", "@x", "--secret-file", str(tmp_path / jwt_secret.CREDENTIAL_SECRET)), {}),
        (("run", "--no-demo"), {auth.ENV_SECRET: SHORT}),
        (("token", "--role", "driver", "--sub", "d1", "--secret", SHORT), {}),
        (("token", "--role", "driver", "--sub", "d1", "--config", str(cfg)), {}),
        (("token", "--role", "driver", "--sub", "d1"), {auth.ENV_SECRET: SHORT}),
    ):
        out = dgdo(*args, env=env)
        line = one_line(out.stderr)
        assert out.returncode == 1 and line.startswith("dgdo: the JWT secret from ") and says in line, (args, line)


def test_each_line_of_a_secret_of_several_is_held_to_32_bytes(tmp_path: Path) -> None:
    """A secret being rotated holds two keys, one per line (auth.keys): a short one is refused too, by line."""
    path = write(tmp_path, "a" * 32 + "\n" + SHORT + "\n", "two")
    out = dgdo("token", "--role", "driver", "--sub", "d1", "--secret-file", str(path))
    assert out.returncode == 1
    assert one_line(out.stderr).startswith(f"dgdo: line 2 of the JWT secret from {path} is 31 bytes; at least 32")
    write(tmp_path, "a" * 32 + "\n" + "b" * 32 + "\n", "two")
    out = dgdo("token", "--role", "driver", "--sub", "d1", "--secret-file", str(path))
    assert out.returncode == 0 and auth.verify(out.stdout.strip(), "a" * 32).sub == "d1"  # the first line signs


def test_where_the_secret_comes_from(tmp_path: Path) -> None:
    a, b, c, d = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
    flag, conf = write(tmp_path, a, "flag"), write(tmp_path, d, "conf")
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds, c + "\n", jwt_secret.CREDENTIAL_SECRET)
    env = {auth.ENV_SECRET: b, "CREDENTIALS_DIRECTORY": str(creds)}
    assert jwt_secret.find(flag, conf, env).secret == a  # a flag first
    assert jwt_secret.find(None, conf, env).secret == b  # then the environment
    assert jwt_secret.find(None, conf, {"CREDENTIALS_DIRECTORY": str(creds)}).secret == c  # the credential
    assert jwt_secret.find(None, conf, {}) == jwt_secret.Found(d, conf)  # the file's [auth] secret_file
    assert jwt_secret.find(None, None, {}) is None


def test_token_and_sidecar_take_the_secret_file_from_the_config(tmp_path: Path) -> None:
    secret = "config-secret-" + "z" * 30
    cfg = write(tmp_path, f'[auth]\nsecret_file = "{write(tmp_path, secret + chr(10), "jwt-secret")}"\n'
                          '[sidecar]\ncontrol = "@dgdo-test-cfg-nobody"\nport = 0\nstatus_interval = 0.0\n')
    out = dgdo("token", "--role", "driver", "--sub", "d1", "--config", str(cfg))
    assert out.returncode == 0 and auth.verify(out.stdout.strip(), secret).sub == "d1"
    env = {k: v for k, v in stack_env().items() if k != auth.ENV_SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "sidecar", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert proc.stdout is not None
        port = LineReader(proc.stdout).wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1)
        assert asyncio.run(_ws_status(f"ws://127.0.0.1:{port}/ws/driver/d1", out.stdout.strip())) == 101
        assert asyncio.run(_ws_status(f"ws://127.0.0.1:{port}/ws/driver/d1", auth.mint(JWT_SECRET, "driver", "d1"))) \
            == 401
    finally:
        proc.terminate()
        proc.wait(20)


async def _ws_status(url: str, token: str) -> int:
    try:
        ws = await AppClient.open(url, token=token)
    except InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return 101


# ---- what `dgdo run` (make run) prints ------------------------------------------------------


def _run_banner(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "--port", "0", "--no-demo",
                             "--status-interval", "0", "--state-dir", new_state_dir(), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    out = LineReader(proc.stdout)
    labels = ("dashboard", "drivers", "passengers", "admin feed", "health", "token")
    shown: dict[str, str] = {}
    attached = False  # the sidecar's log line: from then on /healthz is 200
    while len(shown) < len(labels) or not attached:
        m = out.wait_for(rf"^\[dgdo\] ({'|'.join(labels)}): (.*)$|attached to engine")
        if m.group(1):
            shown[m.group(1)] = m.group(2)
        else:
            attached = True
    return proc, shown


def _check_banner(shown: dict[str, str], env: dict[str, str]) -> int:
    base = re.match(r"http://127\.0\.0\.1:(\d+)/admin\?token=\S+$", shown["dashboard"])
    assert base
    port = base.group(1)
    assert shown["drivers"] == f"ws://127.0.0.1:{port}/ws/driver/{{driver_id}}?token=JWT"
    assert shown["passengers"] == f"ws://127.0.0.1:{port}/ws/passenger/{{passenger_id}}?token=JWT"
    assert shown["admin feed"] == f"ws://127.0.0.1:{port}/ws/admin?token=JWT"
    health, metrics = re.fullmatch(r"(http://\S+/healthz)  metrics: (http://\S+/metrics)", shown["health"]).groups()
    with urllib.request.urlopen(metrics, timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(health, timeout=10) as r:  # the engine is attached: a run serves at once
        assert r.status == 200
    # The token command, run as printed by a shell: its dgdo by absolute path, this run's secret.
    cmd = shlex.split(shown["token"])
    exe = next(word for word in cmd if "=" not in word)
    assert Path(exe).is_absolute()
    done = subprocess.run(["sh", "-c", shown["token"]], capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert done.returncode == 0, done.stderr
    assert asyncio.run(_ws_status(f"ws://127.0.0.1:{port}/ws/driver/d1", done.stdout.strip())) == 101
    return int(port)


def test_run_prints_the_urls_and_a_token_command_that_works(tmp_path: Path) -> None:
    env = {k: v for k, v in stack_env().items() if k != auth.ENV_SECRET}  # a secret made up for the run
    proc, shown = _run_banner(tmp_path, env=env)
    try:
        assert shown["token"].startswith(f"{auth.ENV_SECRET}=")
        _check_banner(shown, {k: v for k, v in os.environ.items() if k != auth.ENV_SECRET})
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_run_with_a_secret_file_names_the_file_not_the_secret(tmp_path: Path) -> None:
    secret = "file-secret-" + "q" * 30
    path = write(tmp_path, secret + "\n", "jwt-secret")
    env = {k: v for k, v in stack_env().items() if k != auth.ENV_SECRET}
    proc, shown = _run_banner(tmp_path, "--secret-file", str(path), env=env)
    try:
        assert f"--secret-file {path}" in shown["token"] and secret not in shown["token"]
        _check_banner(shown, {k: v for k, v in os.environ.items() if k != auth.ENV_SECRET})
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
