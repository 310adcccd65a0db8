"""Offline tokenizers for captions: bytes by default, or a vocabulary file the user gives.

`load_tokenizer(None)` -> ByteTokenizer (UTF-8 bytes, nothing to download).
`load_tokenizer(path)` -> a HF `tokenizers` tokenizer read from:
  * `tokenizer.json` (any saved tokenizer, e.g. CLIP's BPE or BERT's WordPiece),
  * `vocab.txt` (BERT-style WordPiece, lower-cased),
  * a directory holding `tokenizer.json`, `vocab.txt`, or `vocab.json` + `merges.txt`
    (byte-level BPE).
Both give fixed-length int32 ids: `tokenizer(texts, max_length)` -> [batch, max_length].
"""

import os
from typing import Sequence

import numpy as np


class ByteTokenizer:
  """[BOS] utf-8 bytes [EOS], padded with PAD; ids 0..2 are PAD, BOS, EOS, bytes follow."""
  pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
  vocab_size = 256 + offset

  def __call__(self, texts: Sequence[str | bytes], max_length: int) -> np.ndarray:
    if max_length < 2:
      raise ValueError(f"max_length={max_length}: need room for BOS and EOS.")
    ids = np.full((len(texts), max_length), self.pad_id, np.int32)
    for row, text in enumerate(texts):
      data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
      body = np.frombuffer(data[:max_length - 2], np.uint8).astype(np.int32) + self.offset
      ids[row, :len(body) + 2] = [self.bos_id, *body, self.eos_id]
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
    return data.decode("utf-8", errors="replace")


class FileTokenizer:
  """A `tokenizers.Tokenizer` padded/truncated to a fixed length."""

  def __init__(self, tokenizer, source: str):
    self._tokenizer = tokenizer
    self.source = source
    self.vocab_size = tokenizer.get_vocab_size()
    pad = next((t for t in ("[PAD]", "<pad>", "<|endoftext|>") if
                tokenizer.token_to_id(t) is not None), None)
    self.pad_id = tokenizer.token_to_id(pad) if pad else 0

  def __call__(self, texts: Sequence[str | bytes], max_length: int) -> np.ndarray:
    texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
    ids = np.full((len(texts), max_length), self.pad_id, np.int32)
    for row, encoding in enumerate(self._tokenizer.encode_batch(texts)):
      tokens = encoding.ids[:max_length]
      ids[row, :len(tokens)] = tokens
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids if int(i) != self.pad_id])


def load_tokenizer(path: str | None):
  """ByteTokenizer for None/'' / 'bytes'; otherwise a tokenizer read from `path`."""
  if not path or path == "bytes":
    return ByteTokenizer()
  import tokenizers  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer={path!r}: no such file or directory.")
  folder = path if os.path.isdir(path) else None
  candidates = [os.path.join(folder, n) for n in ("tokenizer.json", "vocab.txt")] if folder \
      else [path]
  for candidate in candidates:
    if candidate.endswith(".json") and os.path.isfile(candidate):
      return FileTokenizer(tokenizers.Tokenizer.from_file(candidate), candidate)
    if candidate.endswith(".txt") and os.path.isfile(candidate):
      return FileTokenizer(tokenizers.BertWordPieceTokenizer(candidate, lowercase=True),
                           candidate)
  if folder and all(os.path.isfile(os.path.join(folder, n))
                    for n in ("vocab.json", "merges.txt")):
    return FileTokenizer(tokenizers.ByteLevelBPETokenizer(
        os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")), folder)
  raise ValueError(f"tokenizer={path!r}: expected tokenizer.json, a WordPiece vocab.txt, or "
                   f"a directory with one of them or with vocab.json + merges.txt (BPE).")
