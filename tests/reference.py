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


def _f32(x):
    return float(np.float32(x))   # torch keeps ASGD's eta and mu in float32 0-d tensors


def asgd(p, g, state, t, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, maximize=False):
    g = _prep(p, g, weight_decay, maximize)
    eta, mu = state.get("eta", _f32(lr)), state.get("mu", 1.0)
    ax = _state(state, "ax", p)
    p *= 1 - lambd * eta
    p -= eta * g
    if mu != 1:
        ax += mu * (p - ax)
    else:
        ax[...] = p
    state["eta"] = _f32(lr / (1 + lambd * lr * t) ** alpha)
    state["mu"] = _f32(1 / max(1, t - t0))


def rprop(p, g, state, t, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False):
    g = -g if maximize else g.copy()
    prev = _state(state, "prev", p)
    size = _state(state, "step_size", p, lr)
    s = np.sign(g * prev)
    factor = np.where(s > 0, etas[1], np.where(s < 0, etas[0], 1.0))
    size[...] = np.clip(size * factor, *step_sizes)
    g[s < 0] = 0
    p -= np.sign(g) * size
    prev[...] = g


def _cautious(m, g):
    """Cautious optimizers (Liang et al. 2024): m where it agrees in sign with g, rescaled by the mask's mean."""
    mask = (m * g > 0).astype(np.float64)
    return m * mask / max(mask.mean(), 1e-3)


def adopt(p, g, state, t, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_exp=0.333, weight_decay=0.0,
          decoupled=False, corrected_weight_decay=False, caution=False, maximize=False):
    """Taniguchi et al. 2024 as timm writes it: v from the previous step normalizes g, first step only fills v."""
    g = _prep(p, g, 0 if decoupled else weight_decay, maximize)
    m, v = _state(state, "exp_avg", p), _state(state, "exp_avg_sq", p)
    if t == 1:
        v += g * g
        return
    if decoupled and weight_decay:
        # timm snapshots the constructor lr as max_lr (the tests keep lr fixed)
        p -= (lr ** 2 / lr if corrected_weight_decay else lr) * weight_decay * p
    n = g / np.maximum(np.sqrt(v), eps)
    if clip_exp is not None:
        n = np.clip(n, -(t - 1) ** clip_exp, (t - 1) ** clip_exp)
    m += (1 - betas[0]) * (n - m)
    p -= lr * (_cautious(m, g) if caution else m)
    v *= betas[1]
    v += (1 - betas[1]) * g * g


def adan(p, g, state, t, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, no_prox=False,
         caution=False):
    """Xie et al. 2022 (Algorithm 1, as timm): moments of g, of g - g_prev and of g + b2 (g - g_prev)."""
    b1, b2, b3 = betas
    m, v, d = (_state(state, k, p) for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff"))
    x = g - state["prev_grad"] if t > 1 else np.zeros_like(g)
    m += (1 - b1) * (g - m)
    d *= b2
    d += (1 - b2) * x
    v *= b3
    v += (1 - b3) * (g + b2 * x) ** 2
    denom = np.sqrt(v / (1 - b3 ** t)) + eps
    step = lr * ((_cautious(m, g) if caution else m) / (1 - b1 ** t) + b2 * d / (1 - b2 ** t)) / denom
    if no_prox:
        p *= 1 - lr * weight_decay
        p -= step
    else:
        p -= step
        p /= 1 + lr * weight_decay
    state["prev_grad"] = g.copy()
    state["neg_pre_grad"] = -g


def _schedulefree(p, g, state, t, lr, beta, weight_decay, r, weight_lr_power, adapt):
    """Defazio et al. 2024, y-form: y <- (1-c) y + c z + lr (beta (1-c) - 1) d, z <- z - lr d, c = w_t / sum w."""
    z = state.setdefault("z", p.copy())
    state["lr_max"] = lr_max = max(lr, state.get("lr_max", -1.0))
    weight = t ** r * lr_max ** weight_lr_power
    state["weight_sum"] = total = state.get("weight_sum", 0.0) + weight
    c = weight / total if total else 0.0
    d = adapt(g) + weight_decay * p
    y = (1 - c) * p + c * z
    p[...] = y + lr * (beta * (1 - c) - 1) * d
    z -= lr * d


def _second_moment(state, p, g, beta2, t):
    v = _state(state, "exp_avg_sq", p)
    v *= beta2
    v += (1 - beta2) * g * g
    return v / (1 - beta2 ** t)


def sgdschedulefree(p, g, state, t, lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2):
    lr = lr * min(1.0, t / warmup_steps) if warmup_steps else lr
    _schedulefree(p, g, state, t, lr, momentum, weight_decay, r, weight_lr_power, lambda g: g)


def adamwschedulefree(p, g, state, t, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0,
                      r=0.0, weight_lr_power=2.0):
    lr = lr * min(1.0, t / warmup_steps) if warmup_steps else lr
    v_hat = _second_moment(state, p, g, betas[1], t)
    _schedulefree(p, g, state, t, lr, betas[0], weight_decay, r, weight_lr_power,
                  lambda g: g / (np.sqrt(v_hat) + eps))


def radamschedulefree(p, g, state, t, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, r=0.0,
                      weight_lr_power=2.0, silent_sgd_phase=True):
    rho_inf = 2 / (1 - betas[1]) - 1
    rho_t = rho_inf - 2 * t * betas[1] ** t / (1 - betas[1] ** t)
    if rho_t > 4:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    else:
        rect = 0.0 if silent_sgd_phase else 1.0
    v_hat = _second_moment(state, p, g, betas[1], t)
    _schedulefree(p, g, state, t, lr * rect, betas[0], weight_decay, r, weight_lr_power,
                  (lambda g: g / (np.sqrt(v_hat) + eps)) if rho_t > 4 else (lambda g: g))


def lamb(p, g, state, t, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
         grad_averaging=True, max_grad_norm=1.0, trust_clip=False, always_adapt=False, caution=False,
         decoupled_decay=False, corrected_weight_decay=False):
    """You et al. 2019, NVLAMB as timm: global-norm clip, Adam direction, per-tensor trust ratio ||p|| / ||u||."""
    if max_grad_norm is not None:
        g = g / max(np.linalg.norm(g) / max_grad_norm, 1.0)
    b1, b2 = betas
    m, v = _state(state, "exp_avg", p), _state(state, "exp_avg_sq", p)
    m *= b1
    m += (1 - b1 if grad_averaging else 1.0) * g
    v *= b2
    v += (1 - b2) * g * g
    bc1, bc2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
    u = m / bc1 / (np.sqrt(v / bc2) + eps)
    if caution:
        u = _cautious(u, g)
    if weight_decay and decoupled_decay:
        p *= 1 - (lr ** 2 / lr if corrected_weight_decay else lr) * weight_decay   # max_lr: the (fixed) lr
    elif weight_decay:
        u = u + weight_decay * p
    if weight_decay or always_adapt:
        w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(u)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        u = u * (min(ratio, 1.0) if trust_clip else ratio)
    p -= lr * u


def lars(p, g, state, t, lr=1.0, momentum=0, dampening=0, weight_decay=0, nesterov=False, trust_coeff=0.001, eps=1e-8,
         trust_clip=False, always_adapt=False):
    """You et al. 2017 as timm: d = (g + wd p) * trust_coeff ||p|| / (||g|| + wd ||p|| + eps), then SGD momentum."""
    if weight_decay or always_adapt:
        w_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        ratio = trust_coeff * w_norm / (g_norm + w_norm * weight_decay + eps) if w_norm > 0 and g_norm > 0 else 1.0
        if trust_clip:
            ratio = min(ratio / lr, 1.0)
        g = (g + weight_decay * p) * ratio
    if momentum:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g.copy()
        else:
            state["momentum_buffer"] *= momentum
            state["momentum_buffer"] += (1 - dampening) * g
        buf = state["momentum_buffer"]
        g = g + momentum * buf if nesterov else buf
    p -= lr * g


def mars(p, g, state, t, lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0., gamma=0.025, mars_type="adamw",
         optimize_1d=False, lr_1d_factor=1.0, betas_1d=None, caution=False):
    """Yuan et al. 2024 (MARS-AdamW / MARS-Lion) as timm, for >= 2-D params (all with optimize_1d); else AdamW."""
    m, v, last = (_state(state, k, p) for k in ("exp_avg", "exp_avg_sq", "last_grad"))
    if optimize_1d or p.ndim >= 2:
        b1, b2 = betas
        c = g if t == 1 else g + gamma * b1 / (1 - b1) * (g - last)
        c = c / max(np.linalg.norm(c), 1.0)
        m *= b1
        m += (1 - b1) * c
        mu = _cautious(m, g) if caution else m   # the state keeps m; the update takes the masked one
        if mars_type == "lion":
            p -= lr * (weight_decay * p + np.sign(mu))
        else:
            v *= b2
            v += (1 - b2) * c * c
            p -= lr * (weight_decay * p + mu / (1 - b1 ** t) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    else:
        b1, b2 = betas_1d or betas
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        mu = _cautious(m, g) if caution else m
        p -= lr * lr_1d_factor * (weight_decay * p + mu / (1 - b1 ** t) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    last[...] = g


def schedulefree_x(p, z, beta):
    """What eval() leaves in p: the average x = (y - (1 - beta) z) / beta."""
    return (p - (1 - beta) * z) / beta


REFERENCES = {"SGD": sgd, "Adagrad": adagrad, "RMSprop": rmsprop, "Adadelta": adadelta, "Adam": adam,
              "AdamW": adamw, "Adamax": adamax, "NAdam": nadam, "RAdam": radam, "Lion": lion,
              "ASGD": asgd, "Rprop": rprop, "Adopt": adopt, "Adan": adan, "SGDScheduleFree": sgdschedulefree,
              "AdamWScheduleFree": adamwschedulefree, "RAdamScheduleFree": radamschedulefree, "Lamb": lamb,
              "Lars": lars, "Mars": mars}
