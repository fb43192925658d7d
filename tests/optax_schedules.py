"""optax's values for every optax schedule that fastlr.schedules implements: the cases, the builder
shared with test_schedules.py, and the script that writes the table tests/data/optax_schedules.npz.

optax is not a dependency of fastlr (nor of its tests): the table is generated once, in a
throwaway environment, and committed. To regenerate it:

    python3 -m venv /tmp/venv-optax
    /tmp/venv-optax/bin/pip install optax==0.2.8 "numpy<2.5"
    /tmp/venv-optax/bin/python tests/optax_schedules.py

optax computes in jax's default precision, float32: these are the values optax users get, with
the int32 step count optax's optimizers keep. With JAX_ENABLE_X64=1 and an int64 count it computes
in float64 (an int32 count would still pull the divisions down to float32): the formula's values.
The table holds both, each made in a fresh interpreter, for steps 0 .. STEPS - 1 of every case.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

OPTAX_VERSION = "0.2.8"
STEPS = 300
TABLE = Path(__file__).resolve().parent / "data" / "optax_schedules.npz"


def _s(name, **kwargs):
    return {"name": name, "kwargs": kwargs}


_WARM = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)

# Several argument sets per schedule, chosen to cross every branch inside STEPS steps:
# transition_begin, staircase, end_value as lower and upper bound, exponent, alpha, zero-length
# phases, scales of 0 and > 1, boundaries at 0 and repeated, nested joins.
CASES = [
    _s("constant_schedule", value=0.3),
    _s("polynomial_schedule", init_value=1.0, end_value=0.01, power=2, transition_steps=100, transition_begin=5),
    _s("polynomial_schedule", init_value=0.5, end_value=0.0, power=0.5, transition_steps=250),
    _s("polynomial_schedule", init_value=0.1, end_value=1.0, power=3, transition_steps=120, transition_begin=40),
    _s("polynomial_schedule", init_value=2.0, end_value=1.0, power=3, transition_steps=0),
    _s("linear_schedule", init_value=1.0, end_value=0.0, transition_steps=10, transition_begin=5),
    _s("linear_schedule", init_value=0.0, end_value=0.3, transition_steps=200),
    _s("linear_schedule", init_value=0.3, end_value=0.05, transition_steps=150, transition_begin=100),
    _s("exponential_decay", init_value=2.0, transition_steps=10, decay_rate=0.5),
    _s("exponential_decay", init_value=2.0, transition_steps=10, decay_rate=0.5, transition_begin=3, staircase=True),
    _s("exponential_decay", init_value=1.0, transition_steps=7, decay_rate=0.9, end_value=0.2),
    _s("exponential_decay", init_value=0.01, transition_steps=20, decay_rate=1.5, transition_begin=50,
       end_value=0.05),
    _s("exponential_decay", init_value=0.3, transition_steps=1, decay_rate=0.99),
    _s("cosine_decay_schedule", init_value=2.0, decay_steps=100, alpha=0.1),
    _s("cosine_decay_schedule", init_value=1.0, decay_steps=250, exponent=2.0),
    _s("cosine_decay_schedule", init_value=0.3, decay_steps=300),
    _s("cosine_decay_schedule", init_value=0.5, decay_steps=1),
    _s("warmup_constant_schedule", init_value=0.0, peak_value=2.0, warmup_steps=4),
    _s("warmup_constant_schedule", init_value=0.1, peak_value=0.5, warmup_steps=150),
    _s("warmup_cosine_decay_schedule", init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=110,
       end_value=0.1),
    _s("warmup_cosine_decay_schedule", init_value=1e-4, peak_value=0.3, warmup_steps=50, decay_steps=300,
       exponent=1.5),
    _s("warmup_cosine_decay_schedule", init_value=0.0, peak_value=0.0, warmup_steps=5, decay_steps=50),
    _s("warmup_cosine_decay_schedule", init_value=0.0, peak_value=1.0, warmup_steps=0, decay_steps=200,
       end_value=0.01),
    _s("warmup_exponential_decay_schedule", init_value=0.0, peak_value=1.0, warmup_steps=10, transition_steps=5,
       decay_rate=0.5, transition_begin=2),
    _s("warmup_exponential_decay_schedule", init_value=0.01, peak_value=0.3, warmup_steps=30, transition_steps=20,
       decay_rate=0.8, staircase=True, end_value=0.05),
    _s("piecewise_constant_schedule", init_value=1.0, boundaries_and_scales=[[100, 0.1], [200, 0.01]]),
    _s("piecewise_constant_schedule", init_value=0.3,
       boundaries_and_scales=[[0, 0.5], [50, 2.0], [120, 0.0], [121, 3.0]]),
    _s("piecewise_constant_schedule", init_value=3.0, boundaries_and_scales=None),
    _s("piecewise_interpolate_schedule", interpolate_type="linear", init_value=1.0,
       boundaries_and_scales=[[4, 0.1], [8, 0.01]]),
    _s("piecewise_interpolate_schedule", interpolate_type="cosine", init_value=1.0,
       boundaries_and_scales=[[10, 0.0]]),
    _s("piecewise_interpolate_schedule", interpolate_type="cosine", init_value=0.2,
       boundaries_and_scales=[[0, 2.0], [60, 0.5], [200, 0.1]]),
    _s("piecewise_interpolate_schedule", interpolate_type="linear", init_value=2.0, boundaries_and_scales=None),
    _s("linear_onecycle_schedule", transition_steps=100, peak_value=1.0),
    _s("linear_onecycle_schedule", transition_steps=250, peak_value=0.3, pct_start=0.2, pct_final=0.7,
       div_factor=10.0, final_div_factor=100.0),
    _s("cosine_onecycle_schedule", transition_steps=100, peak_value=1.0),
    _s("cosine_onecycle_schedule", transition_steps=280, peak_value=0.3, pct_start=0.4, div_factor=5.0,
       final_div_factor=50.0),
    _s("sgdr_schedule", cosine_kwargs=[_WARM, {**_WARM, "peak_value": 0.5}]),
    _s("sgdr_schedule", cosine_kwargs=[
        dict(init_value=0.01, peak_value=0.3, warmup_steps=10, decay_steps=100, end_value=0.01),
        dict(init_value=0.01, peak_value=0.2, warmup_steps=5, decay_steps=80),
        dict(init_value=0.0, peak_value=0.1, warmup_steps=0, decay_steps=150, exponent=2.0)]),
    _s("join_schedules", schedules=[_s("constant_schedule", value=1.0),
                                    _s("linear_schedule", init_value=2.0, end_value=0.0, transition_steps=4),
                                    _s("constant_schedule", value=7.0)], boundaries=[3, 5]),
    _s("join_schedules", schedules=[_s("cosine_decay_schedule", init_value=0.3, decay_steps=100),
                                    _s("exponential_decay", init_value=0.3, transition_steps=10, decay_rate=0.7),
                                    _s("linear_schedule", init_value=0.0, end_value=0.1, transition_steps=50)],
       boundaries=[100, 180]),
    _s("join_schedules", schedules=[_s("constant_schedule", value=0.1), _s("constant_schedule", value=0.2),
                                    _s("warmup_constant_schedule", init_value=0.0, peak_value=0.3, warmup_steps=9)],
       boundaries=[50, 50]),
]


def case_id(i, case):
    return f"{i}-{case['name']}"


def build(module, case):
    """The schedule a case describes, made by ``module`` (optax or fastlr.schedules): JSON has no
    int dict keys, so boundaries_and_scales are [step, scale] pairs; join_schedules nests cases."""
    kwargs = dict(case["kwargs"])
    if kwargs.get("boundaries_and_scales") is not None:
        kwargs["boundaries_and_scales"] = {int(b): s for b, s in kwargs["boundaries_and_scales"]}
    if "schedules" in kwargs:
        kwargs["schedules"] = [build(module, c) for c in kwargs["schedules"]]
    return getattr(module, case["name"])(**kwargs)


def load_table():
    """(cases, {"float32": values, "float64": values}, optax version) from the committed table."""
    with np.load(TABLE, allow_pickle=False) as table:
        return (json.loads(str(table["cases"])), {k: table[k] for k in ("float32", "float64")},
                str(table["optax_version"]))


def _values_here():
    """Every case's values at steps 0 .. STEPS - 1, in this interpreter's jax precision."""
    import jax
    import jax.numpy as jnp
    import optax
    assert optax.__version__ == OPTAX_VERSION, optax.__version__
    count = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    out = []
    for case in CASES:
        schedule = build(optax, case)
        out.append([float(schedule(jnp.asarray(t, count))) for t in range(STEPS)])
    return out


def main():
    if os.environ.get("_OPTAX_TABLE_CHILD"):
        print(json.dumps(_values_here()))
        return
    values = {}
    for dtype, x64 in (("float32", "0"), ("float64", "1")):
        env = dict(os.environ, _OPTAX_TABLE_CHILD="1", JAX_ENABLE_X64=x64, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, __file__], env=env, check=True, capture_output=True, text=True)
        values[dtype] = np.array(json.loads(out.stdout), dtype=dtype)
    TABLE.parent.mkdir(exist_ok=True)
    np.savez_compressed(TABLE, cases=np.array(json.dumps(CASES)), optax_version=np.array(OPTAX_VERSION),
                        **values)
    print(f"wrote {TABLE}: {len(CASES)} cases x {STEPS} steps, float32 and float64")


if __name__ == "__main__":
    main()
