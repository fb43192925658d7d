"""The update rules: the only place where an optimizer's formula is written.

Two kinds of plain-Python function live here, and nothing imports numba:

* element rules ``rule(p, g, *states, h) -> (p, *states)`` update ONE element.
  ``h`` is a tuple of per-step scalars, already cast to the parameters' dtype,
  so float32 buffers are computed in float32 (as torch does) with no per-element
  float64 promotion. Each rule's first statement unpacks ``h`` by the names of
  its scalars contract (below). ``kernels/cpu.py`` and ``kernels/cuda.py`` compile these
  same functions for the CPU and for CUDA; the number of states is read off the
  signature.
* host rules ``<algo>_scalars(...) -> h`` compute those per-step scalars once per
  step, in float64 (bias corrections, decayed or rectified step sizes): nothing
  per element that can be computed once. Their arguments are named after the
  param-group hyperparameters and the per-param scalar state (``step``,
  ``mu_product``), which is how optimizers bind them; they run on the host, or in
  a one-thread CUDA kernel for ``capturable=True`` (so they use only arithmetic
  that compiles there, and return a tuple of floats of one fixed length).

Formulas follow torch.optim 2.13 (single-tensor code path) term for term; Lion
follows Chen et al. 2023. ``sign`` is -1.0 under ``maximize`` and 1.0 otherwise;
``wd`` is coupled (L2) weight decay added to the gradient, ``decay`` is the
decoupled factor ``1 - lr * weight_decay`` applied to the parameter.
"""
import math
from collections import namedtuple

import numpy as np

# ---------------------------------------------------------------- per-step scalar contracts
# The named contract between a host rule and its element rules: the host rule returns one of
# these (float64 values, computed once per step), the kernels pass it on as a plain tuple cast
# to the params' dtype, and each element rule unpacks it by these names in this order
# (tests/test_rules.py checks that every element rule's unpacking statement matches).
SGDScalars = namedtuple("SGDScalars", "sign wd lr buf_coef d_coef nesterov_coef")
AdagradScalars = namedtuple("AdagradScalars", "sign wd clr eps")
RMSpropScalars = namedtuple("RMSpropScalars", "sign wd lr alpha one_minus_alpha eps momentum")
AdadeltaScalars = namedtuple("AdadeltaScalars", "sign wd lr rho one_minus_rho eps")
AdamScalars = namedtuple("AdamScalars",
                         "sign wd decay one_minus_beta1 beta2 one_minus_beta2 step_size bc2_sqrt eps")
AdamaxScalars = namedtuple("AdamaxScalars", "sign wd one_minus_beta1 beta2 eps clr")
NAdamScalars = namedtuple("NAdamScalars",
                          "sign wd decay one_minus_beta1 beta2 one_minus_beta2 bias_correction2 eps c_g c_m")
RAdamScalars = namedtuple("RAdamScalars", "sign wd decay one_minus_beta1 beta2 one_minus_beta2 "
                                          "bias_correction1 lr bc2_sqrt eps rect")
LionScalars = namedtuple("LionScalars", "sign decay lr beta1 one_minus_beta1 beta2 one_minus_beta2")
RowWiseAdagradScalars = namedtuple("RowWiseAdagradScalars", "sign wd lr eps")

# Element rules that get a kernel (in the order kernels are generated) -> their scalars contract.
ELEMENT_RULES = {
    "sgd": SGDScalars, "sgd_momentum": SGDScalars, "adagrad": AdagradScalars,
    "rmsprop": RMSpropScalars, "rmsprop_centered": RMSpropScalars, "rmsprop_momentum": RMSpropScalars,
    "rmsprop_centered_momentum": RMSpropScalars, "adadelta": AdadeltaScalars, "adam": AdamScalars,
    "adam_amsgrad": AdamScalars, "adamax": AdamaxScalars, "nadam": NAdamScalars, "radam": RAdamScalars,
    "lion": LionScalars,
}


def condition(g, c):
    """Gradient conditioning fused into every kernel: g * scale, clamped to [lo, hi].

    scale folds the loss-scale division and clip_grad_norm_'s coefficient; [lo, hi] is
    clip_grad_value_'s range (+-inf when off). NaN passes through, as torch.clamp does.
    """
    scale, lo, hi = c
    g = g * scale
    if g < lo:
        return lo
    if g > hi:
        return hi
    return g


def _grad(p, g, sign, wd):
    """g <- sign * g, then + wd * p (coupled decay, skipped when wd == 0 as torch does)."""
    g = g * sign
    if wd != 0:
        g = g + wd * p
    return g


def _maximum(a, b):
    """torch.maximum: the larger value, NaN if either is NaN."""
    return a if (a > b or a != a) else b


def _lerp(a, b, w):
    """torch.lerp(a, b, w) = a + w * (b - a) (for w < 0.5; the other branch differs only in rounding)."""
    return a + w * (b - a)


def _ewma_sq(v, g, beta, one_minus_beta):
    """v * beta + (1 - beta) * g * g, as torch's mul_(beta).addcmul_(g, g, 1 - beta)."""
    return v * beta + one_minus_beta * g * g


# ---------------------------------------------------------------- SGD
def sgd(p, g, h):
    """p <- p - lr * (sign * g + wd * p)."""
    sign, wd, lr, buf_coef, d_coef, nesterov_coef = h
    return (p - lr * _grad(p, g, sign, wd),)


def sgd_momentum(p, g, buf, h):
    """buf <- momentum * buf + (1 - dampening) * d; d <- d + momentum * buf (nesterov) or buf; p <- p - lr * d.

    On the first step torch sets buf = d: the host passes buf_coef = 0, d_coef = 1.
    """
    sign, wd, lr, buf_coef, d_coef, nesterov_coef = h
    d = _grad(p, g, sign, wd)
    buf = buf * buf_coef + d_coef * d
    if nesterov_coef != 0:
        d = d + nesterov_coef * buf
    else:
        d = buf
    return p - lr * d, buf


def sgd_scalars(step, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """step is 1-based; momentum buffers start as a copy of the first gradient (plain sgd ignores the last 3)."""
    first = step == 1
    return SGDScalars(-1.0 if maximize else 1.0, weight_decay, lr, 0.0 if first else momentum,
                      1.0 if first else 1.0 - dampening, momentum if nesterov else 0.0)


# ---------------------------------------------------------------- Adagrad
def adagrad(p, g, state_sum, h):
    """sum <- sum + g^2;  p <- p - clr * g / (sqrt(sum) + eps),  clr = lr / (1 + (t - 1) * lr_decay)."""
    sign, wd, clr, eps = h
    g = _grad(p, g, sign, wd)
    state_sum = state_sum + g * g
    return p - clr * (g / (math.sqrt(state_sum) + eps)), state_sum


def adagrad_scalars(step, lr, lr_decay, weight_decay, eps, maximize):
    return AdagradScalars(-1.0 if maximize else 1.0, weight_decay, lr / (1 + (step - 1) * lr_decay), eps)


# ---------------------------------------------------------------- RMSprop
def _rms_avg(square_avg, eps):
    return math.sqrt(square_avg) + eps


def _rms_centered_avg(square_avg, grad_avg, eps):
    return math.sqrt(square_avg - grad_avg * grad_avg) + eps


def rmsprop(p, g, square_avg, h):
    """v <- alpha v + (1 - alpha) g^2;  p <- p - lr * g / (sqrt(v) + eps)."""
    sign, wd, lr, alpha, one_minus_alpha, eps, momentum = h
    g = _grad(p, g, sign, wd)
    square_avg = _ewma_sq(square_avg, g, alpha, one_minus_alpha)
    return p - lr * (g / _rms_avg(square_avg, eps)), square_avg


def rmsprop_centered(p, g, square_avg, grad_avg, h):
    """As rmsprop, with mean gradient gbar <- lerp(gbar, g, 1 - alpha) and denominator sqrt(v - gbar^2) + eps."""
    sign, wd, lr, alpha, one_minus_alpha, eps, momentum = h
    g = _grad(p, g, sign, wd)
    square_avg = _ewma_sq(square_avg, g, alpha, one_minus_alpha)
    grad_avg = _lerp(grad_avg, g, one_minus_alpha)
    return p - lr * (g / _rms_centered_avg(square_avg, grad_avg, eps)), square_avg, grad_avg


def rmsprop_momentum(p, g, square_avg, buf, h):
    """As rmsprop, then buf <- momentum * buf + g / avg;  p <- p - lr * buf."""
    sign, wd, lr, alpha, one_minus_alpha, eps, momentum = h
    g = _grad(p, g, sign, wd)
    square_avg = _ewma_sq(square_avg, g, alpha, one_minus_alpha)
    buf = buf * momentum + g / _rms_avg(square_avg, eps)
    return p - lr * buf, square_avg, buf


def rmsprop_centered_momentum(p, g, square_avg, grad_avg, buf, h):
    """Centered denominator and momentum buffer together."""
    sign, wd, lr, alpha, one_minus_alpha, eps, momentum = h
    g = _grad(p, g, sign, wd)
    square_avg = _ewma_sq(square_avg, g, alpha, one_minus_alpha)
    grad_avg = _lerp(grad_avg, g, one_minus_alpha)
    buf = buf * momentum + g / _rms_centered_avg(square_avg, grad_avg, eps)
    return p - lr * buf, square_avg, grad_avg, buf


def rmsprop_scalars(lr, alpha, eps, weight_decay, momentum, maximize):
    return RMSpropScalars(-1.0 if maximize else 1.0, weight_decay, lr, alpha, 1.0 - alpha, eps, momentum)


# ---------------------------------------------------------------- Adadelta
def adadelta(p, g, square_avg, acc_delta, h):
    """v <- rho v + (1-rho) g^2;  d <- sqrt(u + eps) / sqrt(v + eps) * g;  u <- rho u + (1-rho) d^2;  p <- p - lr d."""
    sign, wd, lr, rho, one_minus_rho, eps = h
    g = _grad(p, g, sign, wd)
    square_avg = _ewma_sq(square_avg, g, rho, one_minus_rho)
    delta = math.sqrt(acc_delta + eps) / math.sqrt(square_avg + eps) * g
    acc_delta = _ewma_sq(acc_delta, delta, rho, one_minus_rho)
    return p - lr * delta, square_avg, acc_delta


def adadelta_scalars(lr, rho, eps, weight_decay, maximize):
    return AdadeltaScalars(-1.0 if maximize else 1.0, weight_decay, lr, rho, 1.0 - rho, eps)


# ---------------------------------------------------------------- Adam / AdamW
def _adam_moments(p, g, m, v, sign, wd, one_minus_beta1, beta2, one_minus_beta2):
    g = _grad(p, g, sign, wd)
    return _lerp(m, g, one_minus_beta1), _ewma_sq(v, g, beta2, one_minus_beta2)


def _adam_update(p, m, v_hat, step_size, bc2_sqrt, eps):
    """p <- p - step_size * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)."""
    return p - step_size * (m / (math.sqrt(v_hat) / bc2_sqrt + eps))


def adam(p, g, m, v, h):
    """m <- lerp(m, g, 1-b1); v <- b2 v + (1-b2) g^2; p <- decay p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)."""
    sign, wd, decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps = h
    p = p * decay
    m, v = _adam_moments(p, g, m, v, sign, wd, one_minus_beta1, beta2, one_minus_beta2)
    return _adam_update(p, m, v, step_size, bc2_sqrt, eps), m, v


def adam_amsgrad(p, g, m, v, v_max, h):
    """As adam, with v_max <- max(v_max, v) in the denominator."""
    sign, wd, decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps = h
    p = p * decay
    m, v = _adam_moments(p, g, m, v, sign, wd, one_minus_beta1, beta2, one_minus_beta2)
    v_max = _maximum(v_max, v)
    return _adam_update(p, m, v_max, step_size, bc2_sqrt, eps), m, v, v_max


def _decay_split(lr, weight_decay, decoupled_weight_decay):
    """(coupled wd added to the gradient, decoupled factor applied to p)."""
    if decoupled_weight_decay:
        return 0.0, 1.0 - lr * weight_decay
    return weight_decay, 1.0


def adam_scalars(step, lr, betas, eps, weight_decay, maximize, decoupled_weight_decay):
    beta1, beta2 = betas
    wd, decay = _decay_split(lr, weight_decay, decoupled_weight_decay)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    return AdamScalars(-1.0 if maximize else 1.0, wd, decay, 1 - beta1, beta2, 1 - beta2,
                       lr / bias_correction1, math.sqrt(bias_correction2), eps)


# ---------------------------------------------------------------- Adamax
def adamax(p, g, m, u, h):
    """m <- lerp(m, g, 1-b1); u <- max(b2 u, |g| + eps); p <- p - lr/(1-b1^t) * m / u."""
    sign, wd, one_minus_beta1, beta2, eps, clr = h
    g = _grad(p, g, sign, wd)
    m = _lerp(m, g, one_minus_beta1)
    u = _maximum(u * beta2, abs(g) + eps)
    return p - clr * (m / u), m, u


def adamax_scalars(step, lr, betas, eps, weight_decay, maximize):
    beta1, beta2 = betas
    return AdamaxScalars(-1.0 if maximize else 1.0, weight_decay, 1 - beta1, beta2, eps, lr / (1 - beta1 ** step))


# ---------------------------------------------------------------- NAdam
def nadam(p, g, m, v, h):
    """Adam moments, then p <- p - c_g * g / (sqrt(v / (1-b2^t)) + eps) - c_m * m / (same).

    c_g = lr (1 - mu_t) / (1 - prod mu_1..t), c_m = lr mu_{t+1} / (1 - prod mu_1..t+1).
    """
    sign, wd, decay, one_minus_beta1, beta2, one_minus_beta2, bias_correction2, eps, c_g, c_m = h
    p = p * decay
    g = _grad(p, g, sign, wd)
    m = _lerp(m, g, one_minus_beta1)
    v = _ewma_sq(v, g, beta2, one_minus_beta2)
    denom = math.sqrt(v / bias_correction2) + eps
    p = p - c_g * (g / denom)
    return p - c_m * (m / denom), m, v


def nadam_mu(step, beta1, momentum_decay):
    """mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_mu_product(mu_product, step, betas, momentum_decay):
    """prod mu_1..t, kept as torch keeps it: a float32 scalar, multiplied in float32."""
    return float(np.float32(np.float32(mu_product) * np.float32(nadam_mu(step, betas[0], momentum_decay))))


def nadam_scalars(step, mu_product, lr, betas, eps, weight_decay, momentum_decay, maximize, decoupled_weight_decay):
    """mu_product is prod mu_1..t, this step's mu included."""
    beta1, beta2 = betas
    wd, decay = _decay_split(lr, weight_decay, decoupled_weight_decay)
    mu = nadam_mu(step, beta1, momentum_decay)
    mu_next = nadam_mu(step + 1, beta1, momentum_decay)
    return NAdamScalars(-1.0 if maximize else 1.0, wd, decay, 1 - beta1, beta2, 1 - beta2, 1 - beta2 ** step, eps,
                        lr * (1.0 - mu) / (1.0 - mu_product), lr * mu_next / (1.0 - mu_product * mu_next))


# ---------------------------------------------------------------- RAdam
def radam(p, g, m, v, h):
    """Adam moments; if rho_t > 5: p <- p - m/(1-b1^t) lr sqrt(1-b2^t)/(sqrt(v)+eps) r_t, else p - m/(1-b1^t) lr."""
    sign, wd, decay, one_minus_beta1, beta2, one_minus_beta2, bias_correction1, lr, bc2_sqrt, eps, rect = h
    p = p * decay
    m, v = _adam_moments(p, g, m, v, sign, wd, one_minus_beta1, beta2, one_minus_beta2)
    m_hat = m / bias_correction1
    if rect > 0:
        return p - m_hat * lr * (bc2_sqrt / (math.sqrt(v) + eps)) * rect, m, v
    return p - m_hat * lr, m, v


def radam_scalars(step, lr, betas, eps, weight_decay, maximize, decoupled_weight_decay):
    """rect = r_t when the variance is tractable (rho_t > 5), else 0 (un-rectified step)."""
    beta1, beta2 = betas
    wd, decay = _decay_split(lr, weight_decay, decoupled_weight_decay)
    bias_correction2 = 1 - beta2 ** step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    rect = 0.0
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return RAdamScalars(-1.0 if maximize else 1.0, wd, decay, 1 - beta1, beta2, 1 - beta2, 1 - beta1 ** step,
                        lr, math.sqrt(bias_correction2), eps, rect)


# ---------------------------------------------------------------- Lion
def lion(p, g, m, h):
    """p <- decay p - lr * sign(b1 m + (1-b1) g);  m <- b2 m + (1-b2) g  (Chen et al. 2023)."""
    sign, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = h
    g = g * sign
    p = p * decay
    c = m * beta1 + one_minus_beta1 * g
    if c > 0:
        p = p - lr
    elif c < 0:
        p = p + lr
    else:  # c is 0 (no move) or NaN (propagates, as torch's sign does)
        p = p + c * lr
    return p, m * beta2 + one_minus_beta2 * g


def lion_scalars(lr, betas, weight_decay, maximize):
    beta1, beta2 = betas
    return LionScalars(-1.0 if maximize else 1.0, 1.0 - lr * weight_decay, lr, beta1, 1 - beta1, beta2, 1 - beta2)


# ---------------------------------------------------------------- beyond torch.optim's classic ten
# (issue 14) torch.optim's ASGD and Rprop, timm's Adan and Adopt, the schedule-free family. Each
# follows its reference's single-tensor code term for term (named in fastlr/specs.py).
ASGDScalars = namedtuple("ASGDScalars", "sign wd decay eta mu")
RpropScalars = namedtuple("RpropScalars", "sign etaminus etaplus step_size_min step_size_max")
AdoptScalars = namedtuple("AdoptScalars", "sign wd first wd_step lr one_minus_beta1 beta2 one_minus_beta2 eps "
                                          "clip clip_val caution caution_scale")
AdanScalars = namedtuple("AdanScalars", "sign first one_minus_beta1 beta2 one_minus_beta2 beta3 one_minus_beta3 "
                                        "bc3_sqrt eps step_size step_size_diff no_prox decay caution caution_scale")
ScheduleFreeScalars = namedtuple("ScheduleFreeScalars", "wd beta2 one_minus_beta2 bias_correction2 eps adaptive "
                                                        "ckp1 y_lr lr")
LerpScalars = namedtuple("LerpScalars", "weight")


def _lerp_torch(a, b, w):
    """torch.lerp(a, b, w) with both of its branches: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w)."""
    if abs(w) < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (1 - w)


def _clamp(x, lo, hi):
    """torch.clamp: NaN passes through."""
    if x < lo:
        x = lo
    if x > hi:
        x = hi
    return x


def _sign(x):
    """torch.sign: -1, 0 or 1, NaN for NaN."""
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return x * 0.0


# ---------------------------------------------------------------- ASGD
def asgd(p, g, ax, h):
    """p <- p (1 - lambd eta) - eta g;  ax <- p if mu == 1 else ax + mu (p - ax)  (eta, mu: last step's)."""
    sign, wd, decay, eta, mu = h
    g = _grad(p, g, sign, wd)
    p = p * decay
    p = p - eta * g
    if mu == 1:
        return p, p
    return p, ax + (p - ax) * mu


def asgd_scalars(eta, mu, lr, lambd, weight_decay, maximize):
    """Uses the eta and mu that the previous step stored (eta < 0: none yet, the group's lr as torch stores it)."""
    if eta < 0:
        eta = _float32(lr)
    return ASGDScalars(-1.0 if maximize else 1.0, weight_decay, 1.0 - lambd * eta, eta, mu)


def _float32(x):
    """A value as torch keeps it in a float32 0-d tensor."""
    return float(np.float32(x))


def asgd_eta(step, lr, lambd, alpha):
    """eta for the next step, as torch stores it (float32): lr / (1 + lambd lr t)^alpha."""
    return _float32(lr / ((1 + lambd * lr * step) ** alpha))


def asgd_mu(step, t0):
    """mu for the next step (float32): 1 / max(1, t - t0)."""
    return _float32(1 / max(1.0, step - t0))


# ---------------------------------------------------------------- Rprop
def rprop(p, g, prev, step_size, h):
    """torch.optim.Rprop bit for bit: s = sign(g prev), 0 for NaN as torch.sign gives;
    step_size <- clamp(step_size * (etaplus if s > 0, etaminus if s < 0, else 1));  g <- +0 where s < 0;
    p <- p - sign(g) step_size;  prev <- g.

    Selects, no branches, so LLVM vectorizes the loop; every value stays in the arrays' dtype (the 0 and 1
    are made from `sign`: a literal would compute float32 in float64, a different rounding of p than torch's
    and half the vector width)."""
    sign, etaminus, etaplus, step_size_min, step_size_max = h
    zero = sign - sign
    one = sign * sign
    g = g * sign
    s = g * prev
    f = etaplus if s > 0 else (etaminus if s < 0 else one)
    step_size = _clamp(step_size * f, step_size_min, step_size_max)
    g = zero if s < 0 else g
    sign_g = one if g > 0 else (-one if g < 0 else zero)
    return p - sign_g * step_size, g, step_size


def rprop_scalars(etas, step_sizes, maximize):
    return RpropScalars(-1.0 if maximize else 1.0, etas[0], etas[1], step_sizes[0], step_sizes[1])


# ---------------------------------------------------------------- Adopt (timm.optim.Adopt)
def _adopt_moment(p, g, m, v, sign, wd, wd_step, one_minus_beta1, eps, clip, clip_val):
    """(p after decoupled decay, g with coupled decay, the new m) of a step after the first."""
    g = _grad(p, g, sign, wd)
    if wd_step != 0:
        p = p + wd_step * p
    denom = math.sqrt(v)
    if denom < eps:
        denom = eps
    n = g / denom
    if clip != 0:
        n = _clamp(n, -clip_val, clip_val)
    return p, g, _lerp(m, n, one_minus_beta1)


def _cautious(m, g, caution, caution_scale):
    """Cautious optimizers (Liang et al. 2024, as timm): m where m g > 0, else 0, over the tensor's mean of that
    mask (at least 1e-3; 1 without caution)."""
    if caution == 0:
        return m
    if m * g > 0:
        return m * (1 / caution_scale)
    return m * 0


def _agrees(m, g):
    return 1.0 if m * g > 0 else 0.0


def adopt(p, g, m, v, h):
    """First step: v <- g^2 only. Then p <- p - wd_step p (decoupled); n = clamp(g / max(sqrt(v), eps), +-clip);
    m <- lerp(m, n, 1-b1); p <- p - lr m (cautious: masked); v <- b2 v + (1-b2) g^2."""
    (sign, wd, first, wd_step, lr, one_minus_beta1, beta2, one_minus_beta2, eps, clip, clip_val, caution,
     caution_scale) = h
    if first != 0:
        g = _grad(p, g, sign, wd)
        return p, m, v + g * g
    p, g, m = _adopt_moment(p, g, m, v, sign, wd, wd_step, one_minus_beta1, eps, clip, clip_val)
    p = p + (-lr) * _cautious(m, g, caution, caution_scale)
    return p, m, _ewma_sq(v, g, beta2, one_minus_beta2)


def adopt_cautious(p, g, m, v, h):
    """adopt with caution=True: the second pass (the mask's mean comes from adopt_cautious_sums)."""
    return adopt(p, g, m, v, h)


def adopt_cautious_sums(p, g, m, v, h):
    """First pass of caution: how many elements have m_new g > 0 (none counted at the first step)."""
    (sign, wd, first, wd_step, lr, one_minus_beta1, beta2, one_minus_beta2, eps, clip, clip_val, caution,
     caution_scale) = h
    if first != 0:
        return (0.0,)
    p, g, m = _adopt_moment(p, g, m, v, sign, wd, wd_step, one_minus_beta1, eps, clip, clip_val)
    return (_agrees(m, g),)


def caution_mean(h, sums, shape):
    """The tensor's mean of the caution mask, at least 1e-3 (timm: mask.mean().clamp_(min=1e-3))."""
    numel = 1
    for n in shape:
        numel *= n
    return h._replace(caution_scale=max(sums[0] / max(numel, 1), 1e-3))


def adopt_scalars(step, lr, betas, eps, clip_exp, weight_decay, decoupled, corrected_weight_decay, max_lr_snapshot,
                  caution, maximize):
    beta1, beta2 = betas
    wd_step = 0.0
    if weight_decay != 0 and decoupled:
        wd_scale = lr ** 2 / max_lr_snapshot if corrected_weight_decay else lr
        wd_step = -wd_scale * weight_decay
    clip = clip_exp is not None
    clip_val = (step - 1) ** clip_exp if clip else 0.0
    return AdoptScalars(-1.0 if maximize else 1.0, 0.0 if decoupled else weight_decay, 1.0 if step == 1 else 0.0,
                        wd_step, lr, 1 - beta1, beta2, 1 - beta2, eps, 1.0 if clip else 0.0, clip_val,
                        1.0 if caution else 0.0, 1.0)


# ---------------------------------------------------------------- Adan (timm.optim.Adan)
def _adan_moments(g, m, v, d, neg_pre, first, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3):
    if first != 0:
        neg_pre = -g
    x = neg_pre + g
    m = _lerp(m, g, one_minus_beta1)
    d = d * beta2 + one_minus_beta2 * x
    n = x * beta2 + g
    return m, _ewma_sq(v, n, beta3, one_minus_beta3), d


def adan(p, g, m, v, d, neg_pre, h):
    """x = g - g_prev (0 at the first step); m <- lerp(m, g, 1-b1); d <- b2 d + (1-b2) x;
    n = g + b2 x; v <- b3 v + (1-b3) n^2; p <- p - (s m + s_d d) / (sqrt(v)/sqrt(1-b3^t) + eps), with the
    decoupled decay (1 - lr wd) before (no_prox) or / (1 + lr wd) after (cautious: m masked); neg_pre <- -g."""
    (sign, first, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3, bc3_sqrt, eps, step_size,
     step_size_diff, no_prox, decay, caution, caution_scale) = h
    g = g * sign
    m, v, d = _adan_moments(g, m, v, d, neg_pre, first, one_minus_beta1, beta2, one_minus_beta2, beta3,
                            one_minus_beta3)
    denom = math.sqrt(v) / bc3_sqrt + eps
    mm = _cautious(m, g, caution, caution_scale)
    if no_prox != 0:
        p = p * decay
        p = p - step_size * (mm / denom)
        p = p - step_size_diff * (d / denom)
    else:
        p = p - step_size * (mm / denom)
        p = p - step_size_diff * (d / denom)
        p = p / decay
    return p, m, v, d, -g


def adan_cautious(p, g, m, v, d, neg_pre, h):
    return adan(p, g, m, v, d, neg_pre, h)


def adan_cautious_sums(p, g, m, v, d, neg_pre, h):
    """First pass of caution: how many elements have m_new g > 0."""
    one_minus_beta1 = h[2]
    return (_agrees(_lerp(m, g * h[0], one_minus_beta1), g * h[0]),)


def adan_scalars(step, group_step, lr, betas, eps, weight_decay, no_prox, caution):
    """group_step: the group's step count (timm keeps one per group); step == 1: the param's state is new."""
    beta1, beta2, beta3 = betas
    t = group_step
    decay = 1 - lr * weight_decay if no_prox else 1 + lr * weight_decay
    return AdanScalars(1.0, 1.0 if (t == 1 or step == 1) else 0.0, 1 - beta1, beta2,
                       1 - beta2, beta3, 1 - beta3, math.sqrt(1 - beta3 ** t), eps, lr / (1 - beta1 ** t),
                       lr * beta2 / (1 - beta2 ** t), 1.0 if no_prox else 0.0, decay, 1.0 if caution else 0.0, 1.0)


def group_step_next(step):
    """A group's step count after this step (timm's Adan and Lamb keep one per group)."""
    return step + 1


def group_k_next(k):
    """schedule-free's per-group step count k after this step."""
    return k + 1


# ---------------------------------------------------------------- schedule-free (Defazio et al. 2024)
# y (the param) is what gradients are taken at, z the base sequence; x, the average, is never stored:
# eval() moves p to x = lerp(y, z, 1 - 1/beta1), train() back to y = lerp(x, z, 1 - beta1).
def schedulefree_sgd(p, g, z, h):
    """gn = g + wd y;  y <- lerp(y, z, ckp1) + lr (beta (1 - ckp1) - 1) gn;  z <- z - lr gn."""
    wd, beta2, one_minus_beta2, bias_correction2, eps, adaptive, ckp1, y_lr, lr = h
    if wd != 0:
        g = g + wd * p
    p = _lerp_torch(p, z, ckp1)
    return p + y_lr * g, z - lr * g


def schedulefree_adam(p, g, z, v, h):
    """v <- b2 v + (1-b2) g^2; gn = g / (sqrt(v / (1-b2^t)) + eps) (adaptive) else g; then as schedulefree_sgd."""
    wd, beta2, one_minus_beta2, bias_correction2, eps, adaptive, ckp1, y_lr, lr = h
    v = _ewma_sq(v, g, beta2, one_minus_beta2)
    if adaptive != 0:
        g = g / (math.sqrt(v / bias_correction2) + eps)
    if wd != 0:
        g = g + wd * p
    p = _lerp_torch(p, z, ckp1)
    return p + y_lr * g, z - lr * g, v


def schedulefree_lerp(p, g, z, h):
    """train()/eval(): p <- lerp(p, z, weight) (g unused)."""
    weight, = h
    return _lerp_torch(p, z, weight), z


def schedulefree_warmup_lr(k, lr, warmup_steps):
    """This step's lr: a linear warmup over warmup_steps (k: steps done before this one)."""
    return lr * ((k + 1) / warmup_steps if k < warmup_steps else 1.0)


def schedulefree_radam_lr(k, lr, betas, silent_sgd_phase):
    """This step's lr: lr times RAdam's rectification (0, or 1 without silent_sgd_phase, while rho_t <= 4)."""
    return lr * _radam_rect(k + 1, betas[1], silent_sgd_phase)


def _radam_rect(step, beta2, silent_sgd_phase):
    rho_inf, rho_t = _radam_rho(step, beta2)
    if rho_t > 4.0:
        return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    return 0.0 if silent_sgd_phase else 1.0


def _radam_rho(step, beta2):
    beta2_t = beta2 ** step
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf, rho_inf - 2 * step * beta2_t / (1 - beta2_t)


def schedulefree_lr_max(scheduled_lr, lr_max):
    return max(scheduled_lr, lr_max)


def _schedulefree_weight(k, r, lr_max, weight_lr_power):
    return ((k + 1) ** r) * (lr_max ** weight_lr_power)


def schedulefree_weight_sum(k, r, lr_max, weight_lr_power, weight_sum):
    return weight_sum + _schedulefree_weight(k, r, lr_max, weight_lr_power)


def _schedulefree_ckp1(k, r, lr_max, weight_lr_power, weight_sum):
    """k: steps before this one; weight_sum includes this step's weight (0 when it is 0, as the package)."""
    weight = _schedulefree_weight(k, r, lr_max, weight_lr_power)
    return weight / weight_sum if weight_sum != 0 else 0.0


def schedulefree_sgd_scalars(group_k, group_scheduled_lr, group_lr_max, group_weight_sum, momentum, weight_decay,
                             r, weight_lr_power):
    """group_*: the group's values after this step's update (group_k counts this step)."""
    k, lr = group_k - 1, group_scheduled_lr
    ckp1 = _schedulefree_ckp1(k, r, group_lr_max, weight_lr_power, group_weight_sum)
    return ScheduleFreeScalars(weight_decay, 0.0, 0.0, 1.0, 0.0, 0.0, ckp1, lr * (momentum * (1 - ckp1) - 1), lr)


def schedulefree_adamw_scalars(group_k, group_scheduled_lr, group_lr_max, group_weight_sum, betas, eps,
                               weight_decay, r, weight_lr_power):
    beta1, beta2 = betas
    k, lr = group_k - 1, group_scheduled_lr
    ckp1 = _schedulefree_ckp1(k, r, group_lr_max, weight_lr_power, group_weight_sum)
    return ScheduleFreeScalars(weight_decay, beta2, 1 - beta2, 1 - beta2 ** (k + 1), eps, 1.0, ckp1,
                               lr * (beta1 * (1 - ckp1) - 1), lr)


def schedulefree_radam_scalars(group_k, group_scheduled_lr, group_lr_max, group_weight_sum, betas, eps,
                               weight_decay, r, weight_lr_power):
    beta1, beta2 = betas
    k, lr = group_k - 1, group_scheduled_lr
    ckp1 = _schedulefree_ckp1(k, r, group_lr_max, weight_lr_power, group_weight_sum)
    adaptive = 1.0 if _radam_rho(k + 1, beta2)[1] > 4.0 else 0.0
    return ScheduleFreeScalars(weight_decay, beta2, 1 - beta2, 1 - beta2 ** (k + 1), eps, adaptive, ckp1,
                               lr * (beta1 * (1 - ckp1) - 1), lr)


# ---------------------------------------------------------------- two-pass rules: per-tensor reductions
# A two-pass rule (Lamb and Lars' trust ratios, Mars' clip of its corrected gradient) is two element rules and
# a host function, listed in TWO_PASS: the first pass, ``<rule>_sums(p, g, *states, h) -> (x0, x1, ...)``,
# writes nothing; the kernels sum each returned value over every element of a tensor, in float64; the host
# function ``f(h, sums, shape) -> h`` turns one tensor's sums (and its shape) into that tensor's scalars;
# the second pass, the rule itself, updates the tensor with them. Both passes compute the update through the
# same helper, so the second sees exactly what the first summed. A contract field ``adapt`` of 0 for every
# tensor skips the first pass (nothing per tensor is needed then).
LambScalars = namedtuple("LambScalars", "lerp_m beta1 beta3 beta2 one_minus_beta2 bias_correction1 bc2_sqrt eps "
                                        "wd wd_step lr trust_clip adapt trust ratio caution caution_scale")
LarsScalars = namedtuple("LarsScalars", "wd lr buf_coef d_coef nesterov_coef trust_coeff eps trust_clip adapt trust")
MarsScalars = namedtuple("MarsScalars", "first gamma_ratio one_minus_beta1 beta1 beta2 one_minus_beta2 "
                                        "bias_correction1 bc2_sqrt eps wd lr lion adapt is_mars beta1_1d "
                                        "one_minus_beta1_1d beta2_1d one_minus_beta2_1d bias_correction1_1d "
                                        "bc2_sqrt_1d lr_1d scale caution caution_scale")


def _lamb_update(p, g, m, v, lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt, eps,
                 wd_step):
    """(p after decoupled decay, m, v, the update u before coupled decay and the trust ratio), as timm's
    single-tensor Lamb."""
    if lerp_m != 0:
        m = _lerp(m, g, beta3)
    else:
        m = m * beta1 + beta3 * g
    v = _ewma_sq(v, g, beta2, one_minus_beta2)
    u = (m / bias_correction1) / (math.sqrt(v) / bc2_sqrt + eps)
    if wd_step != 0:
        p = p + wd_step * p
    return p, m, v, u


def _coupled(u, p, wd):
    if wd != 0:
        u = u + wd * p
    return u


def lamb_sums(p, g, m, v, h):
    """First pass: p^2 (after decoupled decay) and u^2, for the trust ratio ||p|| / ||u||."""
    (lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt, eps, wd, wd_step, lr, trust_clip,
     adapt, trust, ratio, caution, caution_scale) = h
    p, m, v, u = _lamb_update(p, g, m, v, lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt,
                              eps, wd_step)
    u = _coupled(u, p, wd)
    return p * p, u * u


def lamb(p, g, m, v, h):
    """m, v as Adam (grad averaging: m <- lerp(m, g, 1-b1)); u = m_hat / (sqrt(v_hat) + eps) (cautious: masked
    where u g <= 0, over the mask's mean) (+ wd p); p <- p - lr * trust * u, trust = ||p|| / ||u|| per tensor
    (1 when either is 0; at most 1 with trust_clip)."""
    (lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt, eps, wd, wd_step, lr, trust_clip,
     adapt, trust, ratio, caution, caution_scale) = h
    p, m, v, u = _lamb_update(p, g, m, v, lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt,
                              eps, wd_step)
    u = _coupled(_cautious(u, g, caution, caution_scale), p, wd)
    return p + (-lr) * (u * trust), m, v


def lamb_cautious(p, g, m, v, h):
    """lamb with caution=True: the second pass (the mask's mean and the trust ratio from lamb_cautious_sums)."""
    return lamb(p, g, m, v, h)


def lamb_cautious_sums(p, g, m, v, h):
    """First pass of cautious Lamb: p^2, (u a)^2, (u a) p and a, where a = 1 if u g > 0 else 0 (u before coupled
    decay): the mask's mean and ||u a / mean + wd p|| follow from these four sums."""
    (lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt, eps, wd, wd_step, lr, trust_clip,
     adapt, trust, ratio, caution, caution_scale) = h
    p, m, v, u = _lamb_update(p, g, m, v, lerp_m, beta1, beta3, beta2, one_minus_beta2, bias_correction1, bc2_sqrt,
                              eps, wd_step)
    a = _agrees(u, g)
    u = u * a
    return p * p, u * u, u * p, a


def lamb_scalars(group_step, lr, bias_correction, betas, eps, weight_decay, grad_averaging, trust_clip,
                 always_adapt, decoupled_decay, corrected_weight_decay, max_lr_snapshot, caution):
    """group_step: timm's Lamb counts steps per group (bias corrections)."""
    beta1, beta2 = betas
    beta3 = 1 - beta1 if grad_averaging else 1.0
    t = group_step
    bc1, bc2 = (1 - beta1 ** t, 1 - beta2 ** t) if bias_correction else (1.0, 1.0)
    wd, wd_step = weight_decay, 0.0
    if weight_decay != 0 and decoupled_decay:
        wd_scale = lr ** 2 / max_lr_snapshot if corrected_weight_decay else lr
        wd, wd_step = 0.0, -wd_scale * weight_decay
    ratio = 1.0 if (weight_decay != 0 or always_adapt) else 0.0
    adapt = 1.0 if (ratio != 0 or caution) else 0.0   # a first pass is needed
    return LambScalars(1.0 if beta3 == 1 - beta1 else 0.0, beta1, beta3, beta2, 1 - beta2, bc1, bc2 ** 0.5, eps,
                       wd, wd_step, lr, 1.0 if trust_clip else 0.0, adapt, 1.0, ratio, 1.0 if caution else 0.0, 1.0)


def _trust_ratio(w, u, trust_clip):
    """||p|| / ||u|| (1 when a norm is 0; clipped at 1 with trust_clip), as timm's _lamb_trust_ratio."""
    ratio = w / u if (w > 0 and u > 0) else 1.0
    if trust_clip != 0:
        ratio = min(ratio, 1.0)
    return ratio


def lamb_trust(h, sums, shape):
    """The tensor's trust ratio ||p|| / ||u||."""
    if h.ratio == 0:
        return h
    return h._replace(trust=_trust_ratio(math.sqrt(sums[0]), math.sqrt(sums[1]), h.trust_clip))


def lamb_cautious_trust(h, sums, shape):
    """The mask's mean (at least 1e-3, as caution_mean) and the trust ratio of the masked update:
    ||u a / mean + wd p||^2 = (u a)^2 / mean^2 + 2 wd (u a) p / mean + wd^2 p^2, summed."""
    h = caution_mean(h, sums[3:], shape)
    if h.ratio == 0:
        return h
    s = 1 / h.caution_scale
    uu = s * s * sums[1] + 2 * h.wd * s * sums[2] + h.wd * h.wd * sums[0]
    return h._replace(trust=_trust_ratio(math.sqrt(sums[0]), math.sqrt(max(uu, 0.0)), h.trust_clip))


def lars_sums(p, g, h):
    """First pass: p^2 and g^2 (the gradient as given)."""
    return p * p, g * g


def lars_momentum_sums(p, g, buf, h):
    return lars_sums(p, g, h)


def _lars_grad(p, g, wd, adapt, trust):
    if adapt != 0:
        g = (g + wd * p) * trust
    return g


def lars(p, g, h):
    """Without momentum: p <- p - lr * trust * (g + wd p), trust = trust_coeff ||p|| / (||g|| + wd ||p|| + eps)."""
    wd, lr, buf_coef, d_coef, nesterov_coef, trust_coeff, eps, trust_clip, adapt, trust = h
    return (p + (-lr) * _lars_grad(p, g, wd, adapt, trust),)


def lars_momentum(p, g, buf, h):
    """As lars, through SGD's momentum buffer (a copy of the first step's update, as timm makes it)."""
    wd, lr, buf_coef, d_coef, nesterov_coef, trust_coeff, eps, trust_clip, adapt, trust = h
    g = _lars_grad(p, g, wd, adapt, trust)
    buf = buf * buf_coef + d_coef * g
    if nesterov_coef != 0:
        g = g + nesterov_coef * buf
    else:
        g = buf
    return p + (-lr) * g, buf


def lars_scalars(step, lr, momentum, dampening, weight_decay, nesterov, trust_coeff, eps, trust_clip, always_adapt):
    """step == 1: the momentum buffer is new (timm creates it as a copy of the update)."""
    first = step == 1
    adapt = 1.0 if (weight_decay != 0 or always_adapt) else 0.0
    return LarsScalars(weight_decay, lr, 0.0 if first else momentum, 1.0 if first else 1.0 - dampening,
                       momentum if nesterov else 0.0, trust_coeff, eps, 1.0 if trust_clip else 0.0, adapt, 1.0)


def lars_trust(h, sums, shape):
    if h.adapt == 0:
        return h
    w, g = math.sqrt(sums[0]), math.sqrt(sums[1])
    ratio = h.trust_coeff * w / (g + w * h.wd + h.eps) if (w > 0 and g > 0) else 1.0
    if h.trust_clip != 0:
        ratio = min(ratio / h.lr, 1.0)
    return h._replace(trust=ratio)


def _mars_c(g, last, first, gamma_ratio):
    """MARS' variance-reduced gradient c_t = g + gamma b1 / (1 - b1) (g - g_prev) (g at the first step)."""
    if first != 0:
        return g
    return (g - last) * gamma_ratio + g


def mars_sums(p, g, m, v, last, h):
    """First pass: c_t^2 (2-D and larger params; the others take Adam's path and need no norm)."""
    c = _mars_c(g, last, h[0], h[1])
    return (c * c,)


def _mars_moment(g, m, last, h):
    """(the new first moment, c: the clipped c_t on MARS' path, else g), as mars computes them."""
    (first, gamma_ratio, one_minus_beta1, beta1, beta2, one_minus_beta2, bias_correction1, bc2_sqrt, eps, wd, lr,
     lion, adapt, is_mars, beta1_1d, one_minus_beta1_1d, beta2_1d, one_minus_beta2_1d, bias_correction1_1d,
     bc2_sqrt_1d, lr_1d, scale, caution, caution_scale) = h
    if is_mars != 0:
        c = _mars_c(g, last, first, gamma_ratio) / scale
        return m * beta1 + one_minus_beta1 * c, c
    return m * beta1_1d + one_minus_beta1_1d * g, g


def mars(p, g, m, v, last, h):
    """>= 2-D (or optimize_1d): c = c_t / max(||c_t||, 1); m <- b1 m + (1-b1) c; AdamW (v from c) or Lion
    (sign m) update with p wd added; else AdamW on g with betas_1d and lr * lr_1d_factor. Cautious: the
    update takes m masked where m g <= 0, over the mask's mean (m itself is kept). last <- g."""
    (first, gamma_ratio, one_minus_beta1, beta1, beta2, one_minus_beta2, bias_correction1, bc2_sqrt, eps, wd, lr,
     lion, adapt, is_mars, beta1_1d, one_minus_beta1_1d, beta2_1d, one_minus_beta2_1d, bias_correction1_1d,
     bc2_sqrt_1d, lr_1d, scale, caution, caution_scale) = h
    m, c = _mars_moment(g, m, last, h)
    mu = _cautious(m, g, caution, caution_scale)
    if is_mars != 0:
        if lion != 0:
            u = p * wd + _sign(mu)
        else:
            v = _ewma_sq(v, c, beta2, one_minus_beta2)
            u = p * wd + (mu / bias_correction1) / (math.sqrt(v) / bc2_sqrt + eps)
        return p + (-lr) * u, m, v, g
    v = _ewma_sq(v, g, beta2_1d, one_minus_beta2_1d)
    u = p * wd + (mu / bias_correction1_1d) / (math.sqrt(v) / bc2_sqrt_1d + eps)
    return p + (-lr_1d) * u, m, v, g


def mars_cautious(p, g, m, v, last, h):
    """mars with caution=True: the last pass (the clip from mars_sums, then the mask's mean from
    mars_cautious_sums: three passes, rules.THEN)."""
    return mars(p, g, m, v, last, h)


def mars_cautious_sums(p, g, m, v, last, h):
    """Second pass of cautious Mars (after the clip is known): how many elements have m_new g > 0."""
    m, c = _mars_moment(g, m, last, h)
    return (_agrees(m, g),)


def mars_scalars(step, lr, betas, eps, weight_decay, gamma, mars_type, optimize_1d, lr_1d_factor, betas_1d, caution):
    beta1, beta2 = betas
    b1d, b2d = betas_1d if betas_1d is not None else betas
    return MarsScalars(1.0 if step == 1 else 0.0, gamma * (beta1 / (1.0 - beta1)), 1 - beta1, beta1, beta2,
                       1 - beta2, 1 - beta1 ** step, math.sqrt(1 - beta2 ** step), eps, weight_decay, lr,
                       1.0 if mars_type == "lion" else 0.0, 1.0, 1.0 if optimize_1d else 0.0, b1d, 1 - b1d, b2d,
                       1 - b2d, 1 - b1d ** step, math.sqrt(1 - b2d ** step), lr * lr_1d_factor, 1.0,
                       1.0 if caution else 0.0, 1.0)


def mars_clip(h, sums, shape):
    """>= 2-D params (or all with optimize_1d): the MARS path, c_t divided by max(||c_t||, 1)."""
    if h.is_mars == 0 and len(shape) < 2:
        return h
    return h._replace(is_mars=1.0, scale=max(math.sqrt(sums[0]), 1.0))


# ---------------------------------------------------------------- Muon (torch.optim.Muon): the element parts
# Between the two kernels, Newton-Schulz orthogonalizes the update matrix u through the array library's matmul
# (fastlr/muon.py); the momentum kernel writes u, decay_apply reads the orthogonalized O in g's place.
MuonScalars = namedtuple("MuonScalars", "beta one_minus_beta nesterov decay lr")


def muon_momentum(p, g, buf, u, h):
    """buf <- lerp(buf, g, 1 - mu);  u <- lerp(g, buf, mu) (nesterov) or buf.  p unchanged."""
    beta, one_minus_beta, nesterov, decay, lr = h
    buf = _lerp_torch(buf, g, one_minus_beta)
    if nesterov != 0:
        return p, buf, _lerp_torch(g, buf, beta)
    return p, buf, buf


DecayApplyScalars = namedtuple("DecayApplyScalars", "decay lr")


def decay_apply(p, g, h):
    """p <- p decay - lr u, the update u computed outside the kernel (Muon's O, Adafactor's u) passed as g."""
    decay, lr = h
    p = p * decay
    return (p + (-lr) * g,)


def adafactor_scalars(lr, weight_decay):
    """Adafactor's per-tensor step size needs its norms: fastlr/adafactor.py computes it (and these)."""
    return DecayApplyScalars(1.0 - lr * weight_decay, lr)


def muon_scalars(lr, weight_decay, momentum, nesterov):
    """The decay uses the group's lr; fastlr/muon.py puts each matrix's shape-adjusted lr in ``lr``."""
    return MuonScalars(momentum, 1 - momentum, 1.0 if nesterov else 0.0, 1.0 - lr * weight_decay, lr)


# two-pass rule -> (first-pass rule, how many values it sums, host function of the sums)
TWO_PASS = {"lamb": ("lamb_sums", 2, "lamb_trust"), "lamb_cautious": ("lamb_cautious_sums", 4, "lamb_cautious_trust"),
            "lars": ("lars_sums", 2, "lars_trust"),
            "lars_momentum": ("lars_momentum_sums", 2, "lars_trust"), "mars": ("mars_sums", 1, "mars_clip"),
            "mars_cautious": ("mars_sums", 1, "mars_clip"),
            "adopt_cautious": ("adopt_cautious_sums", 1, "caution_mean"),
            "adan_cautious": ("adan_cautious_sums", 1, "caution_mean")}
# Rules with more passes than two: the first-pass stages after TWO_PASS's, in order, each (sums rule, count, host
# fn) as there, summing with the scalars the stage before set (cautious Mars: its mask follows the clip).
THEN = {"mars_cautious": (("mars_cautious_sums", 1, "caution_mean"),)}
# Every first-pass stage of every multi-pass rule, in order.
PASSES = {rule: (first, *THEN.get(rule, ())) for rule, first in TWO_PASS.items()}


def stage_key(rule, stage):
    """The first-pass kernels' key of stage `stage` of PASSES[rule]: the rule for the first, rule/stage after."""
    return rule if stage == 0 else f"{rule}/{stage}"


ELEMENT_RULES.update({
    "asgd": ASGDScalars, "rprop": RpropScalars, "adopt": AdoptScalars, "adan": AdanScalars,
    "adopt_cautious": AdoptScalars, "adan_cautious": AdanScalars,
    "schedulefree_sgd": ScheduleFreeScalars, "schedulefree_adam": ScheduleFreeScalars,
    "schedulefree_lerp": LerpScalars, "lamb": LambScalars, "lamb_cautious": LambScalars, "lars": LarsScalars,
    "lars_momentum": LarsScalars,
    "mars": MarsScalars, "mars_cautious": MarsScalars, "muon_momentum": MuonScalars,
    "decay_apply": DecayApplyScalars,
})


# ---------------------------------------------------------------- Mixed precision
# 16-bit floats are handled as their bit patterns (uint16 on the CPU, where numba has no
# bfloat16; int16 views of CUDA tensors): ``mbits`` mantissa bits and ``ebits`` exponent
# bits, (7, 8) for bfloat16 and (10, 5) for float16. Plain arithmetic only (frexp/ldexp),
# so the same functions compile for the CPU and for CUDA.
def half_to_float(b, mbits, ebits):
    """The value (float64, exact) of the 16-bit pattern b."""
    b = int(b) & 0xFFFF
    emask = (1 << ebits) - 1
    e = (b >> mbits) & emask
    m = b & ((1 << mbits) - 1)
    bias = (1 << (ebits - 1)) - 1
    if e == emask:
        v = math.inf if m == 0 else math.nan
    elif e == 0:
        v = math.ldexp(float(m), int(1 - bias - mbits))
    else:
        v = math.ldexp(float(m + (1 << mbits)), int(e - bias - mbits))
    if b & 0x8000:
        return -v
    return v


def float_to_half(x, r, mbits, ebits):
    """The 16-bit pattern of x rounded to the format: to nearest even when r < 0, else
    stochastically with the 16 random bits r (0 <= r < 65536): up when the remainder below the
    last kept bit, in units of 2^-16 of it, plus r reaches 65536 (for bfloat16 from float32
    that is exactly ``(bits + r) >> 16``). NaN gives the canonical quiet NaN, overflow inf."""
    emask = (1 << ebits) - 1
    if x != x:
        return (emask << mbits) | (1 << (mbits - 1))
    a = float(x)
    sign = 0
    if a < 0 or (a == 0 and math.copysign(1.0, a) < 0):
        sign = 0x8000
        a = -a
    if a == math.inf:
        return sign | (emask << mbits)
    if a == 0:
        return sign
    bias = (1 << (ebits - 1)) - 1
    fr, e = math.frexp(a)
    exp = e - 1                     # a = 1.f * 2^exp for normal numbers
    if exp < 1 - bias:
        exp = 1 - bias              # subnormal: fixed spacing 2^(1 - bias - mbits)
    q = math.ldexp(a, int(mbits - exp))  # in [2^mbits, 2^(mbits+1)) when normal
    f = int(math.floor(q))
    d = q - f
    if r < 0:
        if d > 0.5 or (d == 0.5 and f % 2 == 1):
            f += 1
    elif int(math.floor(d * 65536.0)) + r >= 65536:
        f += 1
    if f == (2 << mbits):           # rounded up to the next binade
        f = 1 << mbits
        exp += 1
    if f < (1 << mbits):            # subnormal (or rounded down to zero)
        return sign | f
    field = exp + bias
    if field >= emask:
        return sign | (emask << mbits)
    return sign | (field << mbits) | (f - (1 << mbits))


def bf16_to_float(b):
    """bfloat16 pattern -> float32 by bit shift (NumPy scalar views: Python and numba CPU)."""
    return np.uint32((int(b) & 0xFFFF) << 16).view(np.float32)


def float_to_bf16(x, r):
    """float32 -> bfloat16 pattern on the bits, as float_to_half(x, r, 7, 8) (and torch's rounding)."""
    if x != x:
        return 0x7FC0
    u = int(np.float32(x).view(np.uint32))
    if r < 0:
        return (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return (u + r) >> 16


def bf16_to_float_arith(b):
    """bfloat16 pattern -> value by arithmetic only (any target)."""
    return half_to_float(b, 7, 8)


def float_to_bf16_arith(x, r):
    return float_to_half(x, r, 7, 8)


def fp16_to_float(b):
    return half_to_float(b, 10, 5)


def float_to_fp16(x, r):
    return float_to_half(x, r, 10, 5)


def hash32(x):
    """A 32-bit integer hash (lowbias32), the same in Python, on the CPU and on CUDA."""
    x = x & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def random16(key, i):
    """16 uniform random bits for element i under the per-step key: counter-based, no RNG state."""
    return hash32(key ^ (i * 0x9E3779B1)) >> 16


def bits_as_int16(bits):
    """A 16-bit pattern (0..65535) as the signed value an int16 array stores."""
    if bits >= 0x8000:
        return bits - 0x10000
    return bits


# ---------------------------------------------------------------- Row-wise (sparse) rules
# One state value per ROW of a 2-D table: FBGEMM's row-wise Adagrad (1/dim of Adagrad's state).
# The row kernels (sparse_cpu.py, sparse_cuda.py) run two passes over each updated row: the
# row's mean squared gradient first, then every element against the row's new accumulator.
def rowwise_adagrad_grad(p, g, h):
    """The gradient element the row statistics and the update use: sign * g + wd * p."""
    sign, wd, lr, eps = h
    return _grad(p, g, sign, wd)


def rowwise_adagrad_row(state_sum, mean_sq):
    """sum <- sum + mean over the row of g^2 (one accumulator per row)."""
    return state_sum + mean_sq


def rowwise_adagrad_update(p, g, state_sum, h):
    """p <- p - lr * g / (sqrt(sum) + eps), g from rowwise_adagrad_grad, sum the row's new accumulator."""
    sign, wd, lr, eps = h
    return p - lr * (g / (math.sqrt(state_sum) + eps))


def rowwise_adagrad_scalars(lr, eps, weight_decay, maximize):
    return RowWiseAdagradScalars(-1.0 if maximize else 1.0, weight_decay, lr, eps)


# Every rule that takes per-step scalars -> its contract (the element rules and the row-wise parts).
RULE_SCALARS = {**ELEMENT_RULES, "adopt_cautious_sums": AdoptScalars, "adan_cautious_sums": AdanScalars,
                "lamb_sums": LambScalars, "lamb_cautious_sums": LambScalars, "lars_sums": LarsScalars,
                "lars_momentum_sums": LarsScalars, "mars_sums": MarsScalars, "mars_cautious_sums": MarsScalars,
                "rowwise_adagrad_grad": RowWiseAdagradScalars, "rowwise_adagrad_update": RowWiseAdagradScalars}
