"""Every algorithm x every option combination the tests sweep (torch.optim argument names)."""
import itertools


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def _sgd():
    cases = _grid(momentum=[0, 0.9], dampening=[0, 0.1], weight_decay=[0, 0.01], maximize=[False, True])
    cases += _grid(momentum=[0.9], nesterov=[True], weight_decay=[0, 0.01], maximize=[False, True])
    return [dict(c, lr=0.01) for c in cases]


CASES = {
    "SGD": _sgd(),
    "Adagrad": _grid(lr_decay=[0, 0.01], weight_decay=[0, 0.01], initial_accumulator_value=[0, 0.1],
                     maximize=[False, True]),
    "RMSprop": _grid(centered=[False, True], momentum=[0, 0.9], weight_decay=[0, 0.01], maximize=[False, True]),
    "Adadelta": _grid(rho=[0.9, 0.5], weight_decay=[0, 0.01], maximize=[False, True]),
    "Adam": _grid(amsgrad=[False, True], weight_decay=[0, 0.01], maximize=[False, True], lr=[1e-2]),
    "AdamW": _grid(amsgrad=[False, True], weight_decay=[0, 0.1], maximize=[False, True], lr=[1e-2]),
    "Adamax": _grid(weight_decay=[0, 0.01], maximize=[False, True], betas=[(0.9, 0.999), (0.5, 0.9)]),
    "NAdam": _grid(weight_decay=[0, 0.01], decoupled_weight_decay=[False, True], maximize=[False, True]),
    "RAdam": _grid(weight_decay=[0, 0.01], decoupled_weight_decay=[False, True], maximize=[False, True],
                   betas=[(0.9, 0.999), (0.9, 0.9)]),
    "Lion": _grid(weight_decay=[0, 0.1], maximize=[False, True], lr=[1e-3]),
}


def case_id(name, hp):
    return name + "-" + "-".join(f"{k}={v}" for k, v in hp.items())


ALL = [(name, hp) for name, cases in CASES.items() for hp in cases]
