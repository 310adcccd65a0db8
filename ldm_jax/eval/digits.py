"""A quality report for digit samples: a classifier trained on the real digits, its accuracy on
class-conditional samples, and the Fréchet distance in its feature space.

The classifier is a small CNN trained on the digits train split at the samples' resolution
(seeded, 1,500 Adam steps, seconds on a CPU); its penultimate layer (128 ReLU units)
is the feature space. The Fréchet distance is reported next to two references: real vs real
(train split vs test split: the floor a perfect generator would reach with this many
samples) and Gaussian noise vs the test split (a useless generator).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldm_jax.metrics import generative


class DigitClassifier(nn.Module):
  """conv 32 - pool - conv 64 - pool - dense 128 (features) - dense 10; NHWC in [-1, 1]."""

  @nn.compact
  def __call__(self, x, features: bool = False):
    x = x.astype(jnp.float32)
    for width in (32, 64):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), (2, 2))
    h = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return h if features else nn.Dense(10)(h)


@dataclasses.dataclass
class Classifier:
  params: dict
  test_accuracy: float
  model: DigitClassifier = dataclasses.field(default_factory=DigitClassifier)

  def logits(self, images):
    return _batched(lambda x: self.model.apply({"params": self.params}, x), images)

  def predict(self, images) -> np.ndarray:
    return np.argmax(self.logits(images), axis=-1)

  def features(self, images) -> np.ndarray:
    return _batched(lambda x: self.model.apply({"params": self.params}, x, features=True),
                    images)


def _batched(fn, images, batch: int = 500) -> np.ndarray:
  fn = jax.jit(fn)
  return np.concatenate([np.asarray(fn(images[i:i + batch]))
                         for i in range(0, len(images), batch)])


def train_classifier(train_images, train_labels, test_images, test_labels, *,
                     steps: int = 1500, batch: int = 64, seed: int = 0) -> Classifier:
  """Adam (1e-3) on cross-entropy; small random shifts (±1 pixel per 8) as augmentation."""
  model = DigitClassifier()
  key = jax.random.key(seed)
  params = model.init(key, jnp.asarray(train_images[:1]))["params"]
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  shift = max(1, train_images.shape[1] // 8)

  @jax.jit
  def step(params, opt_state, x, y, key):
    dy, dx = jax.random.randint(key, (2,), -shift, shift + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))

    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  for i in range(steps):
    idx = rng.integers(0, len(train_images), batch)
    params, opt_state = step(params, opt_state, train_images[idx], train_labels[idx],
                             jax.random.fold_in(key, i))
  classifier = Classifier(params, 0.0)
  classifier.test_accuracy = float(np.mean(classifier.predict(test_images) == test_labels))
  return classifier


def features_distance(classifier: Classifier, a, b) -> float:
  return generative.frechet_distance(
      *generative.gaussian_moments(classifier.features(a)),
      *generative.gaussian_moments(classifier.features(b)))


def report(classifier: Classifier, samples, sample_labels, train_images, test_images, *,
           seed: int = 0) -> dict:
  """Accuracy of `samples` against the labels they were drawn for, and Fréchet distances."""
  noise = np.clip(np.random.default_rng(seed).normal(size=test_images.shape), -1, 1)
  return {
      "classifier_test_accuracy": classifier.test_accuracy,
      "sample_accuracy": float(np.mean(classifier.predict(samples) == sample_labels)),
      "frechet_samples_vs_test": features_distance(classifier, samples, test_images),
      "frechet_train_vs_test": features_distance(classifier, train_images, test_images),
      "frechet_noise_vs_test": features_distance(classifier, noise.astype(np.float32),
                                                 test_images),
      "num_samples": int(len(samples)),
  }
