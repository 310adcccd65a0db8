"""Worker for digits_test.py: the report's judge trained and applied as the quickstart does,
with its figures written to a JSON file.

  python -m tests.eval._classifier_worker DATA_DIR OUT_JSON
"""

import json
import sys


def main(data_dir: str, out: str) -> None:
  from configs import digits_ldm  # pylint: disable=import-outside-toplevel
  from ldm_jax.eval import digits  # pylint: disable=import-outside-toplevel
  from ldm_jax.eval import digits_report  # pylint: disable=import-outside-toplevel
  config = digits_ldm.get_config()
  config.data.data_dir = data_dir
  train = digits_report.load_split(config.data, "train")
  test = digits_report.load_split(config.data, "test")
  classifier = digits.train_classifier(*train, *test)
  report = digits.report(classifier, test[0], test[1], train[0], test[0])
  with open(out, "w") as f:
    json.dump({"train_shape": list(train[0].shape), "test_shape": list(test[0].shape),
               "test_accuracy": classifier.test_accuracy, **report}, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
