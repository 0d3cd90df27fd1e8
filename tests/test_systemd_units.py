"""The systemd units under systemd/: valid (`systemd-analyze verify`), hardened (`systemd-analyze
security --offline=yes` exposure at most 2.0 each), and saying what the deployment relies on.

verify checks that ExecStart's binaries exist and are executable, so the units are checked as
installed: a copy with /opt/dgdo replaced by a prefix whose bin/ holds this checkout's engine and
`dgdo` (the layout `make install` makes). The template is checked as an instance (@2), so %i is
expanded. scripts/install-deps.sh installs systemd-analyze; without it these tests skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENGINE, ROOT

from sidecar.shell.cli import CREDENTIAL_SECRET

UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (scripts/install-deps.sh installs it)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as `make install PREFIX=...` would use them, with the checkout's binaries."""
    assert ENGINE.exists(), f"{ENGINE} missing: run `make engine`"
    d = tmp_path_factory.mktemp("units")
    prefix = d / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "dgdo-engine").symlink_to(ENGINE)
    (prefix / "bin" / "dgdo").symlink_to(Path(sys.executable).parent / "dgdo")
    for src in UNITS.glob("dgdo*.*"):
        (d / src.name).write_text(src.read_text().replace("/opt/dgdo", str(prefix)))
    shutil.copy(d / "dgdo-sidecar@.service", d / "dgdo-sidecar@2.service")
    return d


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_units_pass_systemd_analyze_verify(installed: Path) -> None:
    done = _analyze("verify", "--man=no", "./dgdo-engine.service", "./dgdo-sidecar@2.service", "./dgdo.target",
                    cwd=installed)
    # verify exits 0 over unknown keys and bad values (it only warns): any line about our units fails too.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "dgdo" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


@pytest.mark.parametrize("unit", ["dgdo-engine.service", "dgdo-sidecar@2.service"])
def test_each_unit_is_hardened_to_exposure_2_or_less(installed: Path, unit: str) -> None:
    done = _analyze("security", "--offline=yes", f"./{unit}", cwd=installed)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m, done.stdout + done.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, done.stdout


def _settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_units_say_what_the_deployment_relies_on() -> None:
    engine, sidecar, target = (_settings(u) for u in ("dgdo-engine.service", "dgdo-sidecar@.service", "dgdo.target"))
    for unit in (engine, sidecar):
        assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"] and "WatchdogSec" in unit
        assert unit["Restart"] == ["on-failure"] and "StartLimitBurst" in unit
        assert unit["User"] == ["dgdo"]
        assert "LimitMEMLOCK" not in unit  # nothing mlocks
        # Shared memory is memfds over the control socket: these stay on (see the units' comments).
        assert unit["PrivateDevices"] == unit["PrivateIPC"] == unit["RemoveIPC"] == ["yes"]
        assert "AF_UNIX" in unit["RestrictAddressFamilies"][0]
    # The engine restarts alone: a worker wants it, never requires it (no restart cascade).
    wants = [unit for line in sidecar["Wants"] for unit in line.split()]
    after = [unit for line in sidecar["After"] for unit in line.split()]
    assert "Requires" not in sidecar and "dgdo-engine.service" in wants and "dgdo-engine.service" in after
    # A worker may listen on one address of the host (host = "10.0.0.5"): at boot it waits until
    # the network is configured, or its bind fails (EADDRNOTAVAIL) and five restarts a second apart
    # leave the unit failed. network.target orders it only after the network stack is started.
    assert "network-online.target" in wants and "network-online.target" in after
    assert "--state-dir /var/lib/dgdo" in engine["ExecStart"][0] and engine["StateDirectory"] == ["dgdo"]
    # The engine jumps its ids only on a new boot, and ProcSubset=pid hides the boot id from it.
    assert engine["ProcSubset"] == ["pid"] and "DGDO_BOOT_ID=%b" in engine["Environment"]
    assert engine["RuntimeDirectory"] == ["dgdo"] and "RuntimeDirectory" not in sidecar  # one owner of /run/dgdo
    assert "--control /run/dgdo/engine.sock" in engine["ExecStart"][0]
    assert "--control /run/dgdo/engine.sock" in sidecar["ExecStart"][0] and "--worker %i" in sidecar["ExecStart"][0]
    assert set(sidecar["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # The secret reaches the sidecar as a credential under the name it reads, never as an env var.
    assert sidecar["LoadCredential"] == [f"{CREDENTIAL_SECRET}:/etc/dgdo/jwt-secret"]
    assert not any("DGDO_JWT_SECRET" in v for vs in sidecar.values() for v in vs)
    assert target["Wants"] == ["dgdo-engine.service"]
    assert engine["WantedBy"] == sidecar["WantedBy"] == ["dgdo.target"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_file_creates_the_dgdo_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    done = subprocess.run(["systemd-sysusers", f"--root={root}", str(UNITS / "dgdo.sysusers.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    user = next(line for line in (root / "etc" / "passwd").read_text().splitlines() if line.startswith("dgdo:"))
    _name, _pw, uid, _gid, _gecos, home, shell = user.split(":")
    assert int(uid) < 1000 and home == "/var/lib/dgdo" and shell.endswith("nologin")  # a system user
