"""Float64 NumPy reference of torch.optim's formulas (torch 2.13, single-tensor path), written
independently of fastlr's rules: whole-array, textbook style.

``REFERENCES[name](p, g, state, t, **hp)`` updates ``p`` and the arrays of ``state`` in place
(``t`` is the 1-based step); the state uses torch's names and is created on first use.
"""
import math

import numpy as np

RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_close(actual, desired, dtype, err_msg=""):
    """rtol per element, plus the same rtol of the array's scale for elements that pass near 0."""
    desired = np.asarray(desired, np.float64)
    rtol = RTOL[np.dtype(dtype).type]
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max(), err_msg=err_msg)


def _prep(p, g, weight_decay, maximize):
    g = -g if maximize else g.copy()
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def _state(state, name, p, fill=0.0):
    if name not in state:
        state[name] = np.full_like(p, fill)
    return state[name]


def sgd(p, g, state, t, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False):
    d = _prep(p, g, weight_decay, maximize)
    if momentum != 0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = d.copy()
        else:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += (1 - dampening) * d
        buf = state["momentum_buffer"]
        d = d + momentum * buf if nesterov else buf
    p -= lr * d


def adagrad(p, g, state, t, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
            maximize=False):
    g = _prep(p, g, weight_decay, maximize)
    s = _state(state, "sum", p, initial_accumulator_value)
    clr = lr / (1 + (t - 1) * lr_decay)
    s += g * g
    p -= clr * g / (np.sqrt(s) + eps)


def rmsprop(p, g, state, t, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
            maximize=False):
    g = _prep(p, g, weight_decay, maximize)
    v = _state(state, "square_avg", p)
    v *= alpha
    v += (1 - alpha) * g * g
    if centered:
        ga = _state(state, "grad_avg", p)
        ga += (1 - alpha) * (g - ga)
        avg = np.sqrt(v - ga * ga) + eps
    else:
        avg = np.sqrt(v) + eps
    if momentum > 0:
        buf = _state(state, "momentum_buffer", p)
        buf *= momentum
        buf += g / avg
        p -= lr * buf
    else:
        p -= lr * g / avg


def adadelta(p, g, state, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False):
    g = _prep(p, g, weight_decay, maximize)
    v = _state(state, "square_avg", p)
    u = _state(state, "acc_delta", p)
    v *= rho
    v += (1 - rho) * g * g
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    u *= rho
    u += (1 - rho) * delta * delta
    p -= lr * delta


def _moments(p, g, state, betas):
    m = _state(state, "exp_avg", p)
    v = _state(state, "exp_avg_sq", p)
    m += (1 - betas[0]) * (g - m)
    v *= betas[1]
    v += (1 - betas[1]) * g * g
    return m, v


def _decay(p, g, lr, weight_decay, maximize, decoupled):
    if decoupled:
        p *= 1 - lr * weight_decay
        return _prep(p, g, 0, maximize)
    return _prep(p, g, weight_decay, maximize)


def adam(p, g, state, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
         maximize=False, decoupled_weight_decay=False):
    g = _decay(p, g, lr, weight_decay, maximize, decoupled_weight_decay)
    m, v = _moments(p, g, state, betas)
    bc1, bc2 = 1 - betas[0] ** t, 1 - betas[1] ** t
    if amsgrad:
        vmax = _state(state, "max_exp_avg_sq", p)
        np.maximum(vmax, v, out=vmax)
        v = vmax
    p -= lr / bc1 * m / (np.sqrt(v) / math.sqrt(bc2) + eps)


def adamw(p, g, state, t, weight_decay=1e-2, **hp):
    adam(p, g, state, t, weight_decay=weight_decay, decoupled_weight_decay=True, **hp)


def adamax(p, g, state, t, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, maximize=False):
    g = _prep(p, g, weight_decay, maximize)
    m = _state(state, "exp_avg", p)
    u = _state(state, "exp_inf", p)
    m += (1 - betas[0]) * (g - m)
    np.maximum(u * betas[1], np.abs(g) + eps, out=u)
    p -= lr / (1 - betas[0] ** t) * m / u


def nadam(p, g, state, t, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
          decoupled_weight_decay=False, maximize=False):
    g = _decay(p, g, lr, weight_decay, maximize, decoupled_weight_decay)
    mu = betas[0] * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = betas[0] * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    # torch keeps mu_product as a float32 scalar tensor (multiplied in float32)
    state["mu_product"] = float(np.float32(np.float32(state.get("mu_product", 1.0)) * np.float32(mu)))
    mp = state["mu_product"]
    m, v = _moments(p, g, state, betas)
    denom = np.sqrt(v / (1 - betas[1] ** t)) + eps
    p -= lr * (1 - mu) / (1 - mp) * g / denom
    p -= lr * mu_next / (1 - mp * mu_next) * m / denom


def radam(p, g, state, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
          maximize=False):
    g = _decay(p, g, lr, weight_decay, maximize, decoupled_weight_decay)
    m, v = _moments(p, g, state, betas)
    bc1, bc2 = 1 - betas[0] ** t, 1 - betas[1] ** t
    rho_inf = 2 / (1 - betas[1]) - 1
    rho_t = rho_inf - 2 * t * betas[1] ** t / bc2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        p -= m / bc1 * lr * math.sqrt(bc2) / (np.sqrt(v) + eps) * rect
    else:
        p -= m / bc1 * lr


def lion(p, g, state, t, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, maximize=False):
    g = -g if maximize else g
    m = _state(state, "exp_avg", p)
    p *= 1 - lr * weight_decay
    p -= lr * np.sign(betas[0] * m + (1 - betas[0]) * g)
    m *= betas[1]
    m += (1 - betas[1]) * g


REFERENCES = {"SGD": sgd, "Adagrad": adagrad, "RMSprop": rmsprop, "Adadelta": adadelta, "Adam": adam,
              "AdamW": adamw, "Adamax": adamax, "NAdam": nadam, "RAdam": radam, "Lion": lion}
