"""Every record, field by field, between Python (sidecar/engine/records.py) and C (include/dgdo/events.h).

events.h is run through the C preprocessor and handed to cffi as it is; cffi's API mode
makes the C compiler check each declared field's offset and type, and the test then
reads back, through the C layout, every field that Python packed — and packs in Python
what C laid out — for every record type.
"""

from __future__ import annotations

import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cffi import FFI

from sidecar.engine import records as R

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "include"

# Python struct for each C record, as records.py names them (nearby drivers is checked by its parts).
PAIRS = {
    "dgdo_in_session": R.IN_SESSION,
    "dgdo_in_driver_location": R.IN_DRIVER_LOCATION,
    "dgdo_in_driver_status": R.IN_DRIVER_STATUS,
    "dgdo_in_ride_request": R.IN_RIDE_REQUEST,
    "dgdo_in_order_command": R.IN_ORDER_COMMAND,
    "dgdo_in_nearby": R.IN_NEARBY,
    "dgdo_out_command_result": R.OUT_COMMAND_RESULT,
    "dgdo_out_order_update": R.OUT_ORDER_UPDATE,
    "dgdo_out_new_order": R.OUT_NEW_ORDER,
    "dgdo_out_cancel_order": R.OUT_CANCEL_ORDER,
    "dgdo_out_driver_position": R.OUT_DRIVER_POSITION,
    "dgdo_out_estimate_update": R.OUT_ESTIMATE_UPDATE,
    "dgdo_nearby_entry": R.NEARBY_ENTRY,
    "dgdo_out_engine_stats": R.OUT_ENGINE_STATS,
    "dgdo_out_session": R.OUT_SESSION,
    "dgdo_out_session_replaced": R.OUT_SESSION_REPLACED,
    "dgdo_fleet": R.FLEET_HEAD,
    "dgdo_fleet_entry": R.FLEET_ENTRY,
}


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    """events.h compiled into a cffi module whose cdef is the header itself, preprocessed."""
    tmp = tmp_path_factory.mktemp("events_cffi")
    stubs = tmp / "stubs"
    stubs.mkdir()
    for name in ("stddef.h", "stdint.h"):  # cffi knows these types; their bodies would not parse
        (stubs / name).write_text("")
    cdef = subprocess.run(
        ["cc", "-E", "-P", "-nostdinc", f"-I{stubs}", f"-I{INCLUDE}", "-D_Static_assert(x,y)=", "-"],
        input='#include "dgdo/events.h"\n', capture_output=True, text=True, check=True,
    ).stdout
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source("_events_check", '#include "dgdo/events.h"', include_dirs=[str(INCLUDE)])
    ffi.compile(tmpdir=str(tmp))  # fails if any declared field differs from what the compiler lays out
    sys.path.insert(0, str(tmp))
    try:
        import _events_check  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp))
    return _events_check


def leaves(ffi: FFI, ctype, prefix: str = "") -> list[tuple[str, object]]:
    """The scalar fields of a C struct in declaration order, nested structs flattened, padding skipped."""
    out = []
    for name, field in ctype.fields:
        if name.startswith("pad_"):
            continue
        t = field.type
        if t.kind == "struct":
            out += leaves(ffi, t, f"{prefix}{name}.")
        elif t.kind == "array" and t.item.cname != "char":  # a run of numbers (histogram buckets): each one
            out += [(f"{prefix}{name}.{k}", t.item) for k in range(t.length)]
        else:
            out.append((f"{prefix}{name}", t))
    return out


def python_fields(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of each value a struct format packs, padding ('x') skipped."""
    out, off = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.lstrip("<")):
        n = int(count or 1)
        size = struct.calcsize("<" + code)
        if code == "x":
            off += n
        elif code == "s":
            out.append((off, n))
            off += n
        else:
            for _ in range(n):
                out.append((off, size))
                off += size
    return out


def _steps(path: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in path.split(".")]


def c_offset(ffi: FFI, c_name: str, path: str) -> int:
    return ffi.offsetof(c_name, *_steps(path))


def sample(ffi: FFI, t, i: int) -> object:
    """A distinct value for field number i of C type t (what Python would pack for it)."""
    if t.kind == "array":  # char[N]: an id or a reason
        return f"f{i}-{'x' * (i % 7)}".encode()
    if t.cname in ("double", "float"):
        return float(i) + 0.25
    return i + 1


def get(cstruct, path: str) -> object:
    for part in _steps(path):
        cstruct = cstruct[part] if isinstance(part, int) else getattr(cstruct, part)
    return cstruct


def put(cstruct, path: str, value: object) -> None:
    *parents, last = _steps(path)
    for part in parents:
        cstruct = cstruct[part] if isinstance(part, int) else getattr(cstruct, part)
    if isinstance(last, int):
        cstruct[last] = value
    else:
        setattr(cstruct, last, value)


@pytest.mark.parametrize("c_name", sorted(PAIRS))
def test_python_and_c_agree_on_every_field(c, c_name: str) -> None:
    ffi = c.ffi
    ctype = ffi.typeof(f"{c_name} *").item
    fields = leaves(ffi, ctype)
    py = PAIRS[c_name]
    assert py.size == ffi.sizeof(ctype)
    values = [sample(ffi, t, i) for i, (_, t) in enumerate(fields)]
    layout = python_fields(py.format)
    assert len(layout) == len(fields), "Python and C disagree on the number of fields"
    for (path, t), (off, size) in zip(fields, layout, strict=True):
        assert (off, size) == (c_offset(ffi, c_name, path), ffi.sizeof(t)), f"{c_name}.{path}: offset/size"

    # Python packs -> C reads every field by name.
    packed = py.pack(*values)
    rec = ffi.from_buffer(f"{c_name} *", bytearray(packed))
    for (path, t), want in zip(fields, values, strict=True):
        got = get(rec, path)
        if t.kind == "array":
            got = ffi.string(got)
        assert got == want, f"{c_name}.{path}: C reads {got!r}, Python packed {want!r}"

    # C lays out -> the same bytes as Python packed (padding zero on both sides).
    fresh = ffi.new(f"{c_name} *")
    for (path, _t), value in zip(fields, values, strict=True):
        put(fresh, path, value)
    assert bytes(ffi.buffer(fresh)) == packed


def test_nan_survives_the_float_fields(c) -> None:
    packed = R.driver_location(R.Origin(1, 1, R.Role.DRIVER, b"d1"), 5, 0, 38.5, 68.7)
    rec = c.ffi.from_buffer("dgdo_in_driver_location *", bytearray(packed))
    assert math.isnan(rec.heading) and math.isnan(rec.speed_kmh) and math.isnan(rec.accuracy_m)
    assert (rec.pos.lat, rec.pos.lon, c.ffi.string(rec.meta.actor.chars)) == (38.5, 68.7, b"d1")
