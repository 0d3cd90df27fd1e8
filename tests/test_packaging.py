"""Packaging as an operator meets it: `python -m build` makes an sdist and, from that sdist, an abi3
wheel; the wheel installed into a fresh venv (pinned by constraints.txt, runtime dependencies
only) next to the engine that `cmake --install` puts in the same prefix runs `dgdo --version` and
`dgdo run --no-demo` (the layout `make install PREFIX=...` makes).

It needs the package index (or pip's cache) for the build backend and the runtime dependencies,
as `make venv` does; about 30 s with a warm cache.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import BUILD, JWT_SECRET, ROOT, LineReader, Stack

from sidecar.shell import lifetime

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DEV_ONLY = ("pytest", "ruff", "hypothesis", "websockets", "playwright", "build")


def run(*cmd: str | Path, cwd: Path = ROOT, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Without --sdist/--wheel, build makes the sdist and then the wheel *from the sdist*: a file
    # missing from the sdist (the headers the cffi build compiles) fails the wheel.
    run(sys.executable, "-m", "build", "--outdir", out, ".")
    return out


def test_sdist_carries_what_the_extension_build_needs(dist: Path) -> None:
    (sdist,) = dist.glob("dgdo-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"include/dgdo/ring.h", "include/dgdo/events.h", "include/dgdo/control.h", "setup.py",
            "sidecar/engine/ring/_build.py", "constraints.txt", "systemd/dgdo-engine.service"} <= names


def test_wheel_is_abi3(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert re.fullmatch(rf"dgdo-{re.escape(VERSION)}-cp311-abi3-linux_\w+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        extensions = [n for n in z.namelist() if n.endswith(".so")]
        tags = z.read(f"dgdo-{VERSION}.dist-info/WHEEL").decode()
    assert extensions == ["sidecar/engine/ring/_dgdo_ring.abi3.so"]
    assert "Tag: cp311-abi3-linux" in tags and "Root-Is-Purelib: false" in tags


def test_wheel_in_a_fresh_venv_runs_with_the_installed_engine(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    prefix = tmp_path / "opt-dgdo"
    run(sys.executable, "-m", "venv", prefix)
    run(prefix / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel)
    run("cmake", "--install", BUILD, "--prefix", prefix)  # the engine's install() rule: PREFIX/bin
    assert os.access(prefix / "bin" / "dgdo-engine", os.X_OK)

    installed = {line.split("==")[0].lower() for line in run(prefix / "bin" / "pip", "freeze").splitlines()}
    assert not installed & set(DEV_ONLY), "dev tools in a production venv"

    env = {k: v for k, v in os.environ.items() if k not in ("DGDO_ENGINE", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # not this checkout's venv: the prefix's own engine is found beside dgdo
    assert run(prefix / "bin" / "dgdo", "--version", cwd=tmp_path, env=env).strip() == f"dgdo {VERSION}"
    engine = run(prefix / "bin" / "dgdo", "engine-path", cwd=tmp_path, env=env).strip()
    assert engine == str(prefix / "bin" / "dgdo-engine")

    env["DGDO_JWT_SECRET"] = JWT_SECRET
    proc = subprocess.Popen([prefix / "bin" / "dgdo", "run", "--no-demo", "--port", "0", "--status-interval", "0",
                             "--state-dir", tmp_path / "state"], cwd=tmp_path, stdout=subprocess.PIPE,
                            env=lifetime.child_env(env))
    try:
        out = LineReader(proc.stdout)
        out.wait_for(r"dgdo-engine ready control=@dgdo-\S+ pid=\d+")
        port = int(out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:(\d+)").group(1))
        Stack(proc, out, port, "installed").wait_healthy()  # 200 once the engine is attached
        # The installed package, not this checkout.
        site = run(prefix / "bin" / "python", "-c", "import sidecar; print(sidecar.__file__)", cwd=tmp_path, env=env)
        assert site.startswith(str(prefix))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _distribution_python() -> str | None:
    """/usr/bin/python3 when it is 3.11 or newer (what the Makefile prefers), else None."""
    try:
        ok = subprocess.run(["/usr/bin/python3", "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                            capture_output=True, timeout=30).returncode == 0
    except OSError:
        return None
    return "/usr/bin/python3" if ok else None


def test_the_venvs_are_made_from_the_distributions_python_unless_told_otherwise() -> None:
    """README "Which Python": the Makefile makes the venvs from the distribution's python3 when it is new
    enough (an optimised build), else from python3 on PATH; `make PYTHON=...` wins, and install-deps
    checks the interpreter the venv is made from. (`make -n`: the commands, printed, not run.)"""
    env = _make_env()  # (not the outer make's PYTHON either)

    def planned(*args: str) -> str:
        return subprocess.run(["make", "-n", "-B", "venv", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True, timeout=60).stdout

    chosen = _distribution_python() or "python3"
    plan = planned()
    assert f"|| {chosen} -m venv .venv" in plan
    assert f"PYTHON={chosen} ./scripts/install-deps.sh" in plan
    plan = planned("PYTHON=/opt/other/bin/python3")
    assert "|| /opt/other/bin/python3 -m venv .venv" in plan
    assert "PYTHON=/opt/other/bin/python3 ./scripts/install-deps.sh" in plan


def _make_env() -> dict[str, str]:
    # Not the outer make's variables (`make test` runs this): its MAKEFLAGS would carry its command line's.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def test_install_builds_without_the_tests_and_asks_for_build_packages_only(tmp_path: Path) -> None:
    """A production host gets what the install needs: the engine built without its GoogleTest suite, in a
    build dir of its own, and install-deps.sh --build (no browser, nginx or promtool). `make -n`: printed."""
    plan = subprocess.run(["make", "-n", "-B", "install", f"PREFIX={tmp_path / 'dgdo-1'}"], cwd=ROOT, env=_make_env(),
                          capture_output=True, text=True, check=True, timeout=60).stdout
    assert "./scripts/install-deps.sh --build" in plan
    assert "-DDGDO_BUILD_TESTS=OFF" in plan
    assert f"cmake --install build/engine-install --prefix {tmp_path / 'dgdo-1'}" in plan
    assert "ctest" not in plan and "cmake -S engine -B build/engine " not in plan


def test_install_refuses_a_prefix_that_is_the_live_symlink(tmp_path: Path) -> None:
    """`make install` with PREFIX the /opt/dgdo symlink would rewrite the running install in place and lose
    the rollback (README "Upgrade and rollback"): refused before anything is built or written."""
    live = tmp_path / "dgdo-0.1.0"
    live.mkdir()
    link = tmp_path / "dgdo"
    link.symlink_to(live)
    r = subprocess.run(["make", "install", f"PREFIX={link}"], cwd=ROOT, env=_make_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    assert f"{link} is a symlink, the install the units run" in r.stderr
    assert list(live.iterdir()) == []
