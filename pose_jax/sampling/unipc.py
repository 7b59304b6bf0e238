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

import jax
import jax.numpy as jnp
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


def _coefficients(plan, order: int, corrector: bool) -> dict:
  """The plan as float64 arrays with one row per step, so that one scanned step serves all:
  ``order - 1`` older slots, padded with ``rho = 0, rk = 1`` where a step uses fewer (warm-up,
  ``lower_order_final``); ``corr_on`` 0 at step 0 (no corrector) and without ``corrector``."""
  slots = order - 1

  def padded(values, fill):
    out = np.full(slots, fill, np.float64)
    out[: len(values)] = values
    return out

  rows = []
  for corr, pred in plan:
    row = dict(
      pred_ratio=pred["ratio"],
      pred_c_m0=pred["c_m0"],
      pred_c_res=pred["c_res"],
      pred_rho=padded(pred["rhos"], 0.0),
      pred_rk=padded(pred["rks"], 1.0),
    )
    on = corr is not None and corrector
    corr = corr if on else dict(ratio=0.0, c_m0=0.0, c_res=0.0, rhos=[0.0], rks=[])
    row.update(
      corr_on=float(on),
      corr_ratio=corr["ratio"],
      corr_c_m0=corr["c_m0"],
      corr_c_res=corr["c_res"],
      corr_rho=padded(corr["rhos"][:-1], 0.0),
      corr_rk=padded(corr["rks"], 1.0),
      corr_rho_last=corr["rhos"][-1],
    )
    rows.append(row)
  return {k: np.stack([np.asarray(r[k], np.float64) for r in rows]) for k in rows[0]}


def _mul(c, a):
  """``c * a`` with the scalar ``c`` in ``a``'s dtype, as a Python float multiplies an array."""
  return c.astype(a.dtype) * a


def _update(ratio, c_m0, c_res, rhos, rks, x, m0, older, m_t=None, rho_last=None):
  """``ratio x - c_m0 m0 - c_res (sum_j rho_j (m_j - m0) / rk_j [+ rho_last (m_t - m0)])``;
  ``older[j]`` is the data prediction ``j + 1`` steps before ``m0``."""
  res = 0.0
  for j in range(rhos.shape[0]):
    d = older[j] - m0
    res = res + _mul(rhos[j], d / rks[j].astype(d.dtype))
  if m_t is not None:
    res = res + _mul(rho_last, m_t - m0)
  return _mul(ratio, x) - _mul(c_m0, m0) - (c_res * res if np.isscalar(res) else _mul(c_res, res))


def unipc_sample(velocity_fn, noise, *, steps: int, shift: float, order: int = 2, corrector=True):
  """UniPC-``order`` flow-matching sampling from ``noise`` (at t = 1) to t = 0.

  ``velocity_fn(x, t)`` is the flow velocity (``eps - x0``) of latents ``x`` at a scalar time
  ``t = timestep / 1000`` (float32), where ``timestep`` is diffusers' integer model timestep
  ``int(1000 sigma)``, NOT ``1000 sigma``: the model must see what the Wan pipeline gives the
  transformer, while the sampler's own math uses the exact sigmas. (Through
  ``velocity.dit_forward``, the DiT then sees ``float32(t) * 1000``, which is the integer exactly
  except at 127, 251, 253, 254, 502, 503, 506, 507, 508 and 511, where no float32 ``t`` gives
  it and it is off by one float32 ulp, at most 3.1e-5.)

  The steps are one ``lax.scan`` (one copy of the model call in the compiled program, whatever
  ``steps``), the last ``order`` data predictions a fixed-size buffer in its carry and each
  step's coefficients a row of precomputed arrays. ``corrector=False`` skips UniC (diffusers
  ``disable_corrector=range(steps)``).
  """
  _check_steps(steps)
  if order not in (1, 2, 3):
    raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
  sigmas, ts = unipc_sigmas(steps, shift)
  coef = _coefficients(_plan(sigmas, order), order, corrector)
  xs = dict(coef, sigma=sigmas[:-1], t=(ts.astype(np.float64) / 1000.0).astype(np.float32))
  xs = {k: jnp.asarray(v, jnp.float32) for k, v in xs.items()}  # the times stay exact float32
  dtype = noise.dtype
  v_dtype = jax.eval_shape(velocity_fn, noise, xs["t"][0]).dtype
  m_dtype = jnp.result_type(dtype, v_dtype)

  def step(carry, c):
    x, last, hist = carry  # hist[j]: the data prediction j + 1 steps back (newest first)
    m_t = x - _mul(c["sigma"], velocity_fn(x, c["t"]))
    corr = (c["corr_ratio"], c["corr_c_m0"], c["corr_c_res"], c["corr_rho"], c["corr_rk"])
    corrected = _update(*corr, last, hist[0], hist[1:], m_t, c["corr_rho_last"]).astype(dtype)
    x = jnp.where(c["corr_on"] > 0, corrected, x)
    hist = jnp.concatenate([m_t[None].astype(m_dtype), hist[:-1]])
    pred = (c["pred_ratio"], c["pred_c_m0"], c["pred_c_res"], c["pred_rho"], c["pred_rk"])
    return (_update(*pred, x, m_t, hist[1:]).astype(dtype), x, hist), None

  hist = jnp.zeros((order, *noise.shape), m_dtype)  # order >= 1, checked above
  return jax.lax.scan(step, (noise, noise, hist), xs)[0][0]


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
