#!/usr/bin/env python3
"""Writes the pickles the Haiku checkpoint reader is tested on (tests/fixtures/haiku/) and the
hostile ones it must refuse (tests/fixtures/hostile/haiku/).

Run it with a NumPy 2 Python (the project's reference venv) and again with a NumPy 1 one, so
both spellings of NumPy's globals (`numpy._core…` and `numpy.core…`) are covered:

    /work/main/.venv-ref/bin/python scripts/make_haiku_pickle_fixtures.py
    python3 -m venv .venv-haiku && .venv-haiku/bin/pip install 'numpy==1.26.4' 'ml_dtypes==0.4.1'
    .venv-haiku/bin/python scripts/make_haiku_pickle_fixtures.py

Each benign file `np{N}_{name}.pickle` has its expected contents in `np{N}_expected.json`:
file → "params"/"state" → module → parameter → {"shape", "data"}, the values as NumPy casts
them to float32, row-major.

Haiku and JAX themselves are not installed: their classes are stood in for by classes that
pickle exactly as the released versions do, read from dm-haiku's and JAX's sources:

* dm-haiku 0.0.3–0.0.9 (`haiku/_src/data_structures.py`): `FlatMapping.__reduce__` (and, from
  0.0.5, `FlatMap.__reduce__`) returns `(FlatMapping, (self._to_mapping(),))`, a plain dict of
  what the mapping holds. dm-haiku ≥ 0.0.6 returns plain dicts from `init` by default.
* JAX (`jax/_src/device_array.py`, 2021–2022): `DeviceArray.__reduce__` returns
  `(reconstruct_device_array, (fun, args, arr_state, aval_state))` where `fun, args,
  arr_state = np.asarray(self).__reduce__()`. Later `jax._src.array.ArrayImpl` does the same
  with `_reconstruct_array`.
"""

import collections
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENIGN = ROOT / "tests" / "fixtures" / "haiku"
HOSTILE = ROOT / "tests" / "fixtures" / "hostile" / "haiku"
NP = int(np.__version__.split(".")[0])


def fake_module(name):
    """A module in sys.modules, so pickle can name a class or function in it."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
    return sys.modules[name]


ds = fake_module("haiku._src.data_structures")


class FlatMapping(dict):
    """Pickles as Haiku 0.0.4's FlatMapping: `(FlatMapping, (dict,))`."""

    def __reduce__(self):
        return FlatMapping, (dict(self),)


FlatMapping.__module__ = "haiku._src.data_structures"
ds.FlatMapping = FlatMapping


class FlatMap(dict):
    """Haiku 0.0.5's FlatMap: it too pickles under the name FlatMapping."""

    def __reduce__(self):
        return FlatMapping, (dict(self),)


FlatMap.__module__ = "haiku._src.data_structures"
ds.FlatMap = FlatMap

jda = fake_module("jax._src.device_array")


def reconstruct_device_array(fun, args, arr_state, aval_state):
    np_value = fun(*args)
    np_value.__setstate__(arr_state)
    return np_value


reconstruct_device_array.__module__ = "jax._src.device_array"
jda.reconstruct_device_array = reconstruct_device_array


class DeviceArray:
    """Pickles as JAX's DeviceArray."""

    def __init__(self, value):
        self._value = np.asarray(value)

    def __reduce__(self):
        fun, args, arr_state = self._value.__reduce__()
        aval_state = {"weak_type": False, "named_shape": {}}
        return reconstruct_device_array, (fun, args, arr_state, aval_state)


def rng_array(seed, shape, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def params_plain():
    """A small Haiku-shaped params mapping exercising each kind of array."""
    shared = rng_array(9, (2, 2))
    p = {
        "perceiver_encoder/~/cross_attention/attention/linear": {
            "w": rng_array(1, (3, 4)),
            "b": rng_array(2, (4,)),
        },
        "embed": {"embeddings": rng_array(3, (5, 3))},
        "layer_norm": {
            "scale": rng_array(4, (4,), np.float16),
            "offset": rng_array(5, (4,), np.float64),
        },
        "big_endian/linear": {"w": rng_array(6, (2, 3), ">f4"), "b": rng_array(7, (3,), ">f8")},
        "fortran/linear": {"w": np.asfortranarray(rng_array(8, (2, 3, 4)))},
        "ints": {
            "i64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
            "u8": np.arange(250, 256, dtype=np.uint8),
            "flags": np.array([True, False, True]),
        },
        "zero_d": {"count": np.array(7, dtype=np.int32), "scalar": np.float32(2.5)},
        "empty": {"w": np.zeros((0, 3), dtype=np.float32)},
        # One array object in two places: the pickle stores it once and refers to it again.
        "tied_a": {"w": shared},
        "tied_b": {"w": shared},
    }
    try:
        import ml_dtypes

        p["bf16"] = {"w": rng_array(10, (2, 3)).astype(ml_dtypes.bfloat16)}
    except ImportError:
        pass
    return p


def expected(tree):
    out = {}
    for module, names in tree.items():
        out[module] = {}
        for name, arr in names.items():
            arr = np.asarray(arr._value if isinstance(arr, DeviceArray) else arr)
            f = arr.astype(np.float32)
            out[module][name] = {
                "shape": list(arr.shape),
                "data": [float(x) for x in np.ascontiguousarray(f).ravel()],
            }
    return out


def write(path, obj, protocol):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(data)
    return data


def main():
    expect = {}

    def benign(name, obj, protocol, params, state=None):
        fname = f"np{NP}_{name}.pickle"
        data = write(BENIGN / fname, obj, protocol)
        # Python's own unpickler (with the stand-in classes) reads back what was written.
        back = pickle.loads(data)
        back_params = back["params"] if state is not None else back
        for module, names in params.items():
            for pname, arr in names.items():
                arr = arr._value if isinstance(arr, DeviceArray) else arr
                assert np.array_equal(np.asarray(back_params[module][pname]), np.asarray(arr))
        entry = {"params": expected(params)}
        if state is not None:
            entry["state"] = expected(state)
        expect[fname] = entry

    plain = params_plain()
    for protocol in (2, 3, 4, 5):
        benign(f"params_p{protocol}", plain, protocol, plain)

    # Haiku 0.0.4: the outer mapping a FlatMapping, the modules plain dicts.
    small = {k: plain[k] for k in ("perceiver_encoder/~/cross_attention/attention/linear", "embed")}
    for protocol in (2, 4):
        benign(f"flatmapping_p{protocol}", FlatMapping(small), protocol, small)
    # Haiku 0.0.5: FlatMap at every level, pickled under the FlatMapping name.
    nested = FlatMap({k: FlatMap(v) for k, v in small.items()})
    benign("flatmap_nested_p4", nested, 4, small)
    # OrderedDicts instead of dicts.
    ordered = collections.OrderedDict((k, collections.OrderedDict(v)) for k, v in small.items())
    benign("ordereddict_p3", ordered, 3, small)
    # JAX arrays as leaves.
    jax_params = {"linear": {"w": DeviceArray(rng_array(11, (2, 3))), "b": DeviceArray(rng_array(12, (3,)))}}
    benign("jax_arrays_p4", jax_params, 4, jax_params)
    # A .pystate: params and state (batch-norm statistics), as DeepMind's image models ship.
    state = {
        "batchnorm/~/mean_ema": {
            "counter": np.array(3, dtype=np.int32),
            "hidden": rng_array(13, (1, 1, 4)),
            "average": rng_array(14, (1, 1, 4)),
        }
    }
    benign("pystate_p4", {"params": FlatMapping(small), "state": state}, 4, small, state)

    (BENIGN / f"np{NP}_expected.json").write_text(json.dumps(expect, indent=1, sort_keys=True) + "\n")

    # Hostile pickles: each would run a command (or code) in Python's unpickler. Written with
    # reductions to the real callables; nothing here is ever loaded by Python.
    marker = "/tmp/perceiver-haiku-pwned"

    class Evil:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    hostile = {
        "os_system": Evil(os.system, (f"touch {marker}",)),
        "builtins_eval": Evil(eval, (f"__import__('os').system('touch {marker}')",)),
        "builtins_exec": Evil(exec, (f"open('{marker}', 'w')",)),
        "subprocess_popen": Evil(subprocess.Popen, (["touch", marker],)),
        # The evil call hidden as one parameter among good ones.
        "nested_in_params": {"linear": {"w": np.zeros(2, np.float32), "b": Evil(os.system, (f"touch {marker}",))}},
    }
    if NP == 2:
        for name, obj in hostile.items():
            for protocol in (2, 4):
                write(HOSTILE / f"{name}_p{protocol}.pickle", obj, protocol)
    print(f"numpy {np.__version__}: {len(expect)} benign fixtures in {BENIGN}")


if __name__ == "__main__":
    main()
