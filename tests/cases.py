"""Every algorithm x every option combination the tests sweep (torch.optim argument names),
derived from the registry: ``fastlr.specs.SPECS[name].test_cases()``."""
from fastlr.specs import SPECS

CASES = {name: spec.test_cases() for name, spec in SPECS.items()}


def case_id(name, hp):
    return name + "-" + "-".join(f"{k}={v}" for k, v in hp.items())


ALL = [(name, hp) for name, cases in CASES.items() for hp in cases]
