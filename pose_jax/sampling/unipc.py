"""The teacher's UniPC multistep sampler for flow matching, as diffusers'
``UniPCMultistepScheduler`` is configured by the Wan2.1 diffusers checkpoints::

  prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0 (480p) / 5.0 (720p),
  num_train_timesteps=1000, solver_order=2, predict_x0=True, solver_type="bh2",
  lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
  disable_corrector=[], no thresholding, no solver_p.

Schedule: ``steps`` sigmas ``linspace(1, 1/1000, steps + 1)[:-1]``, Wan-shifted, the first one
lowered by 1e-6 (so ``log(1 - sigma)`` stays finite), then a final 0. The model timesteps are
``int64(1000 sigma)``: truncated, so the first one is 999, not 1000.

Each step with data prediction ``m_i = x_i - sigma_i v(x_i)`` (x0 from the flow velocity) and
``lambda = log((1 - sigma) / sigma)``:
  * UniC corrector (not at the first step): re-solves the previous step from the previous
    sample with the new ``m_i`` included, replacing ``x_i`` (the model output ``m_i`` itself,
    computed at the uncorrected ``x_i``, is kept);
  * UniP predictor to ``sigma_{i+1}`` from the last ``p`` data predictions, with
    ``p = min(order, i + 1, steps - i)`` (warm-up and ``lower_order_final``; the last step is
    thus first order and returns ``m_{N-1}``).
B(h) is ``bh2``: ``B(h) = expm1(-h)``. The scalar coefficients are computed in float64 NumPy
from the float32 sigmas (diffusers computes them in float32 torch); the latents stay in the
noise dtype.
"""

from __future__ import annotations

import numpy as np

from pose_jax.pose.velocity import guided_velocity

_EPS_FIRST = 1e-6  # diffusers lowers a first sigma of 1 by this


def unipc_sigmas(
  steps: int, shift: float, num_train_timesteps: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
  """diffusers' ``scheduler.sigmas`` (float32 ``[steps + 1]``, ending in 0) and
  ``scheduler.timesteps`` (int64 ``[steps]``) after ``set_timesteps(steps)``.

  The float64 arithmetic below is the same as diffusers', so the truncation to integer
  timesteps agrees exactly.
  """
  _check_steps(steps)
  sigmas = np.linspace(1.0, 1.0 / num_train_timesteps, steps + 1)[:-1]
  sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
  if np.fabs(sigmas[0] - 1.0) < _EPS_FIRST:
    sigmas[0] -= _EPS_FIRST
  ts = (sigmas * num_train_timesteps).astype(np.int64)
  return np.concatenate([sigmas, [0.0]]).astype(np.float32), ts


def _check_steps(steps):
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"UniPC needs an integer number of steps >= 1, got {steps!r}")


def _bh2(lam_t: float, lam_s0: float, lam_hist: list[float], order: int):
  """Coefficients of a B(h)=bh2 UniP/UniC update from ``lambda_s0`` to ``lambda_t`` with the
  earlier ``lambda``s of ``lam_hist`` (newest first, ``order - 1`` of them), predict_x0:
  ``h_phi_1``, ``B_h``, ``rks`` and the order conditions ``R rho = b``."""
  h = lam_t - lam_s0  # +inf when sigma_t = 0 (then order is 1 and no rk is needed)
  rks = np.array([(lam - lam_s0) / h for lam in lam_hist] + [1.0])
  hh = -h
  h_phi_1 = np.expm1(hh)
  b_h = np.expm1(hh)
  h_phi_k = h_phi_1 / hh - 1.0
  factorial, b, rows = 1, [], []
  for i in range(1, order + 1):
    rows.append(rks ** (i - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return float(h_phi_1), float(b_h), rks, np.stack(rows), np.array(b)


def _plan(sigmas: np.ndarray, order: int):
  """Per step: the predictor's order and coefficients, and the corrector's (None at step 0)."""
  sig = sigmas.astype(np.float64)
  alpha = 1.0 - sig
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sig)  # lam[-1] = +inf at sigma = 0
  n = len(sig) - 1
  plan, prev_order = [], None
  for i in range(n):
    corr = None
    if i > 0:
      k = prev_order
      h_phi_1, b_h, rks, r, b = _bh2(lam[i], lam[i - 1], [lam[i - 1 - j] for j in range(1, k)], k)
      rhos = np.array([0.5]) if k == 1 else np.linalg.solve(r, b)
      corr = dict(
        k=k,
        ratio=sig[i] / sig[i - 1],
        c_m0=alpha[i] * h_phi_1,
        c_res=alpha[i] * b_h,
        rks=rks[:-1],
        rhos=rhos,
      )
    k = min(order, n - i, i + 1)  # lower_order_final, then warm-up
    h_phi_1, b_h, rks, r, b = _bh2(lam[i + 1], lam[i], [lam[i - j] for j in range(1, k)], k)
    if k == 1:
      rhos = np.zeros(0)
    elif k == 2:
      rhos = np.array([0.5])
    else:
      rhos = np.linalg.solve(r[:-1, :-1], b[:-1])
    pred = dict(
      k=k,
      ratio=sig[i + 1] / sig[i],
      c_m0=alpha[i + 1] * h_phi_1,
      c_res=alpha[i + 1] * b_h,
      rks=rks[:-1],
      rhos=rhos,
    )
    plan.append((corr, pred))
    prev_order = k
  return plan


def _update(c, x, m0, older, m_t=None):
  """``ratio x - c_m0 m0 - c_res (sum_j rho_j (m_j - m0) / rk_j [+ rho_last (m_t - m0)])``."""
  res = 0.0
  for rho, rk, m in zip(c["rhos"], c["rks"], older):
    res = res + float(rho) * ((m - m0) / float(rk))
  if m_t is not None:
    res = res + float(c["rhos"][-1]) * (m_t - m0)
  return float(c["ratio"]) * x - float(c["c_m0"]) * m0 - float(c["c_res"]) * res


def unipc_sample(velocity_fn, noise, *, steps: int, shift: float, order: int = 2, corrector=True):
  """UniPC-``order`` flow-matching sampling from ``noise`` (at t = 1) to t = 0.

  ``velocity_fn(x, t)`` is the flow velocity (``eps - x0``) of latents ``x`` at a scalar time
  ``t = timestep / 1000`` (float32), where ``timestep`` is diffusers' integer model timestep
  ``int(1000 sigma)``, NOT ``1000 sigma``: the model must see what the Wan pipeline gives the
  transformer, while the sampler's own math uses the exact sigmas. (Through
  ``velocity.dit_forward``, the DiT then sees ``float32(t) * 1000``, which is the integer exactly
  except at 127, 251, 253, 254, 502, 503, 506, 507, 508 and 511, where no float32 ``t`` gives
  it and it is off by one float32 ulp, at most 3.1e-5.)

  The Python loop is over ``steps`` (static); history is kept as arrays, so the whole call is
  jit-able. ``corrector=False`` skips UniC (diffusers ``disable_corrector=range(steps)``).
  """
  _check_steps(steps)
  if order not in (1, 2, 3):
    raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
  sigmas, ts = unipc_sigmas(steps, shift)
  times = ts.astype(np.float64) / 1000.0
  dtype = noise.dtype
  x, last, hist = noise, None, []  # hist: data predictions, newest last
  for i, (corr, pred) in enumerate(_plan(sigmas, order)):
    m_t = x - float(sigmas[i]) * velocity_fn(x, np.float32(times[i]))
    if corr is not None and corrector:
      # m_{i-1} and the corrector's older m_{i-2}, ..., m_{i-k}
      x = _update(corr, last, hist[-1], hist[-2 : -corr["k"] - 1 : -1], m_t).astype(dtype)
    hist = (hist + [m_t])[-order:]
    last = x
    x = _update(pred, x, m_t, hist[-2 : -pred["k"] - 1 : -1]).astype(dtype)
  return x


def teacher_unipc(
  graphdef,
  params,
  noise,
  cond,
  text,
  image,
  *,
  steps: int,
  shift: float,
  guidance_scale: float = 1.0,
  neg_text=None,
):
  """The Wan2.1 teacher sampled with UniPC (order 2), CFG ``v_u + guidance_scale (v_c - v_u)``
  as in ``samplers.teacher_euler`` (two DiT calls per step when ``guidance_scale != 1``)."""
  velocity_fn = guided_velocity(graphdef, params, cond, text, image, guidance_scale, neg_text)
  return unipc_sample(velocity_fn, noise, steps=steps, shift=shift)
