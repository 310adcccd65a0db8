"""Sample-quality metrics on Inception features (metrics/inception.py), as the papers' tools
compute them, in float64 numpy:

  frechet_distance   FID / sFID from two Gaussians (pytorch-fid's formula: scipy's sqrtm, eps
                     on a singular product, its check of the imaginary part; or
                     torch-fidelity 0.4.0's from eigenvalues);
  inception_score    IS from the unbiased logits: torch-fidelity's 10 splits after its seeded
                     shuffle (seed 2020), mean and std over splits;
  kernel_distance    KID: torch-fidelity's unbiased MMD^2 with the cubic polynomial kernel
                     (gamma 1/d, coef 1) over 100 random subsets of 1000 (seed 2020);
  precision_recall   improved precision/recall (Kynkäänniemi et al.) with k = 3, as ADM's
                     evaluator and torch-fidelity: a sample counts if it lies within the k-th
                     nearest-neighbour radius of any point of the other set.

`Moments` accumulates mean and covariance over batches in float64 (FID's statistics need no
stored features).
"""

import dataclasses

import numpy as np
import scipy.linalg

SEED = 2020  # torch-fidelity's default rng_seed (IS shuffle, KID subsets).


def gaussian_moments(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance with ddof 1) of [N, D] features, in float64."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


@dataclasses.dataclass
class Moments:
  """Running count, sum and sum of outer products (float64) of [N, D] feature batches."""
  count: int = 0
  total: np.ndarray | None = None
  outer: np.ndarray | None = None

  def add(self, features) -> "Moments":
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f"features: shape {x.shape}; expected [batch, dim].")
    if self.total is None:
      self.total, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
    elif x.shape[1] != self.total.shape[0]:
      raise ValueError(f"features: dim {x.shape[1]}; earlier batches had "
                       f"{self.total.shape[0]}.")
    self.count += len(x)
    self.total += x.sum(axis=0)
    self.outer += x.T @ x
    return self

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f"{self.count} sample(s): a covariance needs 2 at least.")
    mean = self.total / self.count
    cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return mean, (cov + cov.T) / 2


FID_METHODS = ("sqrtm", "eigvals")


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, *,
                     method: str = "sqrtm") -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

  method='sqrtm': pytorch-fid's and torch-fidelity <= 0.3.0's (the LDM paper's) formula:
  scipy's matrix square root, eps added to both diagonals on a singular product, and an
  imaginary part above 1e-3 on the root's diagonal an error (it is, whenever there are fewer
  samples than feature dimensions). method='eigvals': torch-fidelity 0.4.0's, the trace from
  the square roots of S1 S2's eigenvalues (real parts), defined for any sample count.
  """
  if method not in FID_METHODS:
    raise ValueError(f"method={method!r}: expected one of {FID_METHODS}.")
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"Fréchet distance: means {mu1.shape} vs {mu2.shape}, covariances "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  diff = mu1 - mu2
  if method == "eigvals":
    roots = np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype(np.complex128))
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * roots.real.sum())
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Fréchet distance: imaginary component "
                       f"{np.max(np.abs(covmean.imag))} in the matrix square root (with "
                       f"fewer samples than feature dimensions it is ill-defined: use "
                       f"method='eigvals', torch-fidelity 0.4.0's, or more samples).")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def inception_score(logits, splits: int = 10, *, shuffle: bool = True,
                    seed: int = SEED) -> tuple[float, float]:
  """(mean, std) over `splits` of exp(E_x KL(p(y|x) || p(y))), from [N, C] unbiased logits."""
  logits = np.asarray(logits)
  n = len(logits)
  if n < splits:
    raise ValueError(f"Inception Score: {n} samples for {splits} splits.")
  if shuffle:
    logits = logits[np.random.RandomState(seed).permutation(n)]
  log_p = _log_softmax(logits.astype(np.float64))
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    part, log_part = p[i * n // splits:(i + 1) * n // splits], \
        log_p[i * n // splits:(i + 1) * n // splits]
    log_marginal = np.log(part.mean(axis=0, keepdims=True))
    scores.append(np.exp((part * (log_part - log_marginal)).sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased(k_xx, k_xy, k_yy) -> float:
  m = len(k_xx)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2 * k_xy.sum() / (m * m))


def kernel_distance(features_1, features_2, *, subsets: int = 100, subset_size: int = 1000,
                    degree: int = 3, coef0: float = 1.0, gamma: float | None = None,
                    seed: int = SEED) -> tuple[float, float]:
  """KID (mean, std over subsets): the unbiased MMD^2 under (gamma x.y + coef0)^degree."""
  f1, f2 = np.asarray(features_1, np.float64), np.asarray(features_2, np.float64)
  if min(len(f1), len(f2)) < subset_size:
    raise ValueError(f"KID: subsets of {subset_size} need that many samples on each side "
                     f"(got {len(f1)} and {len(f2)}); lower subset_size.")
  gamma = 1.0 / f1.shape[1] if gamma is None else gamma
  kernel = lambda a, b: (a @ b.T * gamma + coef0) ** degree
  rng = np.random.RandomState(seed)
  mmds = []
  for _ in range(subsets):
    a = f1[rng.choice(len(f1), subset_size, replace=False)]
    b = f2[rng.choice(len(f2), subset_size, replace=False)]
    mmds.append(_mmd2_unbiased(kernel(a, a), kernel(a, b), kernel(b, b)))
  return float(np.mean(mmds)), float(np.std(mmds))


def _distances(a, b) -> np.ndarray:
  squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
  return np.sqrt(np.maximum(squared, 0))


def precision_recall(generated, real, k: int = 3, *, block: int = 4096) -> tuple[float, float]:
  """(precision, recall): the share of generated samples inside some real sample's k-NN ball,
  and of real samples inside some generated sample's ball (the k-th neighbour besides itself)."""
  generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
  if min(len(generated), len(real)) <= k:
    raise ValueError(f"Precision/recall with k={k} needs more than {k} samples on each side "
                     f"(got {len(generated)} and {len(real)}).")

  def radii(x):
    return np.concatenate([np.partition(_distances(x[i:i + block], x), k, axis=1)[:, k]
                           for i in range(0, len(x), block)])

  def covered(points, centres, radius):
    return np.concatenate([(_distances(points[i:i + block], centres) <= radius).any(axis=1)
                           for i in range(0, len(points), block)])

  precision = covered(generated, real, radii(real)).mean()
  recall = covered(real, generated, radii(generated)).mean()
  return float(precision), float(recall)
