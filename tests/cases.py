"""Every algorithm x every option combination the tests sweep (torch.optim argument names),
derived from the registry: ``fastlr.specs.SPECS[name].test_cases()``."""
from fastlr.kernels.rules import TWO_PASS
from fastlr.specs import SPECS

# (Muon takes 2-D params only: tests/test_muon.py)
# (Muon and Adafactor step through array-library ops of their own: tests/test_muon.py, test_adafactor.py)
CASES = {name: spec.test_cases() for name, spec in SPECS.items() if spec.launch is None}


def case_id(name, hp):
    return name + "-" + "-".join(f"{k}={v}" for k, v in hp.items())


ALL = [(name, hp) for name, cases in CASES.items() for hp in cases]


def optimizer(module, name):
    """module.<name> as a constructor; schedule-free optimizers come back in train mode, as training code
    puts them (the schedulefree package's step() refuses eval mode, and so does fastlr's)."""
    cls = getattr(module, name)
    if not hasattr(cls, "train"):
        return cls

    def make(*args, **kwargs):
        opt = cls(*args, **kwargs)
        opt.train()
        return opt
    return make


def whole_step_only(name, hp):
    """Whether these options need the whole tensor or model at every step (per-tensor passes, per-group
    schedules): then there are no lazy row updates (step_rows) and no capturable steps."""
    spec = SPECS[name]
    group = {**spec.constants, **spec.defaults, **spec.group_defaults(spec.defaults), **hp}
    return bool(spec.group_updates) or not spec.lazy_rows or spec.rule(group) in TWO_PASS
