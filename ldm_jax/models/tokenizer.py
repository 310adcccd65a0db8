"""Offline tokenizers for captions: bytes by default, or the vocabulary files the user gives.

`load_tokenizer(None)` -> ByteTokenizer (UTF-8 bytes, nothing to download).
`load_tokenizer(path, kind=None)` reads `path` with the HF `tokenizers` library; the kind is
detected from the files unless `kind` ('clip', 'wordpiece' or 'bytes') demands one:
  * CLIP's byte-level BPE (Stable Diffusion 1.x and 2.x) -> CLIPTokenizer: a folder with
    `vocab.json` + `merges.txt` whose vocabulary holds '<|startoftext|>' and '<|endoftext|>'
    (a diffusers pipeline's `tokenizer/`), or a `tokenizer.json` whose BPE ends words with
    '</w>'. Its padding follows the folder's tokenizer_config.json / special_tokens_map.json:
    SD 1.x pads with '<|endoftext|>', SD 2.x with '!' (id 0).
  * BERT's WordPiece (LDM txt2img's BERTTokenizer), lower-cased: a `vocab.txt`, or a
    `tokenizer.json` with a WordPiece model -> FileTokenizer.
  * any other `tokenizer.json`, or `vocab.json` + `merges.txt` without CLIP's special tokens
    (GPT-2's byte-level BPE, which is not CLIP's) -> FileTokenizer; `kind` cannot name these.
All give fixed-length int32 ids: `tokenizer(texts, max_length)` -> [batch, max_length], the
content truncated so that the closing special token ([SEP], '<|endoftext|>') stays last.
"""

import json
import os
from typing import Sequence

from absl import logging
import numpy as np

KINDS = ("clip", "wordpiece", "bytes")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# OpenAI's CLIP pre-tokenizer: special tokens, English contractions, letter runs, single
# digits, runs of anything else; whitespace separates pieces and is dropped. (The original is
# case-insensitive; the text is lower-cased before it runs.)
CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
              r"[^\s\p{L}\p{N}]+")


class TokenizerFilesNotFound(FileNotFoundError, ValueError):
  """The folder lacks the files a tokenizer needs (a ValueError too, as it was before)."""


class ByteTokenizer:
  """[BOS] utf-8 bytes [EOS], padded with PAD; ids 0..2 are PAD, BOS, EOS, bytes follow."""
  pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
  vocab_size = 256 + offset

  def __call__(self, texts: Sequence[str | bytes], max_length: int, *,
               warn_every_seconds: float | None = None) -> np.ndarray:
    del warn_every_seconds  # Bytes past max_length are cut silently, as before.
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
  """A `tokenizers.Tokenizer` truncated (by the library, which keeps its post-processor's
  closing token) and padded to a fixed length; one warning per call says what was cut."""

  def __init__(self, tokenizer, source: str, pad_id: int | None = None):
    self.tokenizer = tokenizer
    self.source = source
    self.vocab_size = tokenizer.get_vocab_size()
    if pad_id is None:
      pad = next((t for t in ("[PAD]", "<pad>", CLIP_EOS) if
                  tokenizer.token_to_id(t) is not None), None)
      pad_id = tokenizer.token_to_id(pad) if pad else 0
    self.pad_id = pad_id
    tokenizer.no_padding()

  def __call__(self, texts: Sequence[str | bytes], max_length: int, *,
               warn_every_seconds: float | None = None) -> np.ndarray:
    """Ids [len(texts), max_length]; truncation is warned about at every call, or at most
    once per `warn_every_seconds` (training batches)."""
    specials = self.tokenizer.num_special_tokens_to_add(False)
    if max_length <= specials:
      raise ValueError(f"max_length={max_length}: need room for the {specials} special tokens "
                       f"of {self.source} and at least one more.")
    texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
    self.tokenizer.enable_truncation(max_length)
    ids = np.full((len(texts), max_length), self.pad_id, np.int32)
    cut_rows = cut_tokens = 0
    for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
      ids[row, :len(encoding.ids)] = encoding.ids
      cut = sum(len(o.ids) - sum(o.special_tokens_mask) for o in encoding.overflowing)
      cut_rows, cut_tokens = cut_rows + bool(cut), cut_tokens + cut
    if cut_rows:
      args = ("%d of %d prompts are over the %d content tokens that max_length=%d holds: %d "
              "tokens at their ends were dropped.", cut_rows, len(texts), max_length - specials,
              max_length, cut_tokens)
      if warn_every_seconds:
        logging.log_every_n_seconds(logging.WARNING, args[0], warn_every_seconds, *args[1:])
      else:
        logging.warning(*args)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids if int(i) != self.pad_id])

  def save(self, path: str) -> None:
    """Writes the tokenizer as one `tokenizer.json`, which `load_tokenizer` reads back."""
    self.tokenizer.save(path)


class CLIPTokenizer(FileTokenizer):
  """CLIP's tokenizer as Stable Diffusion uses it: NFC, whitespace runs to one space, lower
  case, CLIP's pre-tokenizer split, byte-level BPE marking word ends with '</w>', ids wrapped
  in '<|startoftext|>' ... '<|endoftext|>' (49406, 49407 in the 49408-token vocabulary).

  OpenAI's original also runs ftfy.fix_text and html.unescape first; transformers' tokenizer
  (diffusers' pipelines) does not, and neither does this, so text that those change (curly
  quotes, '&amp;', full-width letters) tokenizes as in diffusers.

  `pad`: 'eos' (SD 1.x, transformers' CLIPTokenizer), 'zero' or 0 (SD 2.x: open_clip pads
  with 0, the id of '!'), or another token id.
  """

  def __init__(self, tokenizer, source: str, pad: str | int = "eos"):
    from tokenizers import processors  # pylint: disable=g-import-not-at-top
    self.bos_id, self.eos_id = (tokenizer.token_to_id(t) for t in (CLIP_BOS, CLIP_EOS))
    if self.bos_id is None or self.eos_id is None:
      raise ValueError(f"{source}: not CLIP's vocabulary, expected its special tokens "
                       f"{CLIP_BOS!r} and {CLIP_EOS!r}.")
    vocab_size = tokenizer.get_vocab_size()
    if pad == "eos":
      pad_id = self.eos_id
    elif pad == "zero":
      pad_id = 0
    elif isinstance(pad, int) and not isinstance(pad, bool) and 0 <= pad < vocab_size:
      pad_id = pad
    else:
      raise ValueError(f"pad={pad!r}: expected 'eos' (SD 1.x), 'zero' or 0 (SD 2.x), or a "
                       f"token id below {vocab_size}.")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}",
        special_tokens=[(CLIP_BOS, self.bos_id), (CLIP_EOS, self.eos_id)])
    super().__init__(tokenizer, source, pad_id)

  @classmethod
  def from_files(cls, vocab_json: str, merges_txt: str, pad: str | int = "eos"):
    """From CLIP's `vocab.json` (token -> id) and `merges.txt` (one merge a line)."""
    return cls(clip_bpe(vocab_json, merges_txt), os.path.dirname(vocab_json), pad)

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids` before their last '<|endoftext|>': padding follows it (with pad 0,
    '!' tokens; with eos, more of it), while a prompt may hold the special token itself."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:len(ids) - 1 - ids[::-1].index(self.eos_id)]
    return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def clip_bpe(vocab_json: str, merges_txt: str):
  """CLIP's pipeline (CLIPTokenizer's docstring) as a `tokenizers.Tokenizer`, without the
  post-processor that CLIPTokenizer adds."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  normalizers, pre_tokenizers = tokenizers.normalizers, tokenizers.pre_tokenizers
  for file in (vocab_json, merges_txt):
    if not os.path.isfile(file):
      raise FileNotFoundError(f"{file}: no such file; CLIP's BPE needs vocab.json and "
                              f"merges.txt.")
  if _vocab_json_kind(vocab_json) != "clip":
    raise ValueError(f"{vocab_json}: not CLIP's vocabulary, expected its special tokens "
                     f"{CLIP_BOS!r} and {CLIP_EOS!r}.")
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(
      vocab_json, merges_txt, unk_token=CLIP_EOS, continuing_subword_prefix="",
      end_of_word_suffix="</w>", fuse_unk=False))
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
      normalizers.Strip(), normalizers.Lowercase()])
  # CLIP's split already separates what GPT-2's regex would: ByteLevel only maps bytes.
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(CLIP_SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  # Word ends become the byte-level symbol of a space ('\u0120'), then bytes become text.
  tokenizer.decoder = tokenizers.decoders.Sequence([
      tokenizers.decoders.Replace("</w>", "\u0120"), tokenizers.decoders.ByteLevel()])
  tokenizer.add_special_tokens([CLIP_BOS, CLIP_EOS])
  return tokenizer


def _tokenizer_json_kind(path: str) -> str:
  """'clip', 'wordpiece' or the model type that tokenizer.json `path` holds."""
  try:
    with open(path, encoding="utf-8") as f:
      model = json.load(f)["model"]
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: expected a `tokenizers` tokenizer.json with a 'model' "
                     f"({type(e).__name__}: {e}).") from e
  if model.get("type") == "BPE" and model.get("end_of_word_suffix") == "</w>":
    return "clip"
  return "wordpiece" if model.get("type") == "WordPiece" else f"{model.get('type')} model"


def _vocab_json_kind(path: str) -> str:
  """'clip' when vocab.json `path` holds CLIP's special tokens, else 'byte-level BPE'."""
  try:
    with open(path, encoding="utf-8") as f:
      vocab = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path}: expected a JSON object of token -> id ({e}).") from e
  if not isinstance(vocab, dict):
    raise ValueError(f"{path}: expected a JSON object of token -> id, got "
                     f"{type(vocab).__name__}.")
  return "clip" if CLIP_BOS in vocab and CLIP_EOS in vocab else "byte-level BPE (GPT-2 style)"


def _configured_pad(folder: str, tokenizer) -> int | str:
  """The pad id the folder's tokenizer_config.json / special_tokens_map.json name (the latter
  wins, as in transformers), or 'eos' when neither names one."""
  pad = None
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    file = os.path.join(folder, name)
    if os.path.isfile(file):
      try:
        with open(file, encoding="utf-8") as f:
          value = json.load(f).get("pad_token")
      except (ValueError, AttributeError) as e:
        raise ValueError(f"{file}: expected a JSON object ({type(e).__name__}: {e}).") from e
      value = value.get("content") if isinstance(value, dict) else value
      if value is not None:
        pad = (file, value)
  if pad is None:
    return "eos"
  pad_id = tokenizer.token_to_id(pad[1])
  if pad_id is None:
    raise ValueError(f"{pad[0]}: pad_token={pad[1]!r} is not in the vocabulary.")
  return pad_id


def _find(path: str, kind: str | None) -> tuple[str, list[str]]:
  """(kind found, files to read) for a tokenizer file or folder (vocab.json or merges.txt
  stand for the folder that holds both)."""
  if os.path.basename(path) in ("vocab.json", "merges.txt"):
    path = os.path.dirname(path) or "."
  if os.path.isfile(path):
    if path.endswith(".json"):
      return _tokenizer_json_kind(path), [path]
    return "wordpiece", [path]
  names = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt")
  tokenizer_json, vocab_txt, vocab_json, merges = (os.path.join(path, n) for n in names)
  if os.path.isfile(tokenizer_json):
    return _tokenizer_json_kind(tokenizer_json), [tokenizer_json]
  if os.path.isfile(vocab_txt):
    return "wordpiece", [vocab_txt]
  if os.path.isfile(vocab_json) and os.path.isfile(merges):
    return _vocab_json_kind(vocab_json), [vocab_json, merges]
  present = [n for n in names if os.path.isfile(os.path.join(path, n))]
  expected = {"clip": "CLIP's tokenizer.json, or its vocab.json + merges.txt",
              "wordpiece": "a WordPiece tokenizer.json or vocab.txt"}.get(
                  kind, "tokenizer.json, a WordPiece vocab.txt, or vocab.json + merges.txt (BPE)")
  raise TokenizerFilesNotFound(f"tokenizer={path!r}: expected {expected} in this folder; found "
                               f"{present or 'none of them'}.")


def load_tokenizer(path: str | None, kind: str | None = None, pad: str | int | None = None):
  """The tokenizer in `path` (module docstring): ByteTokenizer for None/''/'bytes'.

  `kind`: 'clip', 'wordpiece' or 'bytes' to demand one (files of another kind raise
  ValueError), None to detect it. `pad`: CLIP's padding (see CLIPTokenizer); None follows
  the folder's tokenizer_config.json / special_tokens_map.json, else pads with eos.
  """
  if kind not in (None, *KINDS):
    raise ValueError(f"kind={kind!r}: expected one of {KINDS} or None (detect).")
  if kind == "bytes" or not path or path == "bytes":
    if kind not in (None, "bytes"):
      raise ValueError(f"kind={kind!r} reads the tokenizer's files: give their path, not "
                       f"{path!r}.")
    if path and path != "bytes":
      raise ValueError(f"kind='bytes' reads no files: got tokenizer={path!r}.")
    if pad is not None:
      raise ValueError(f"pad={pad!r} is for CLIP tokenizers; the byte tokenizer pads with 0.")
    return ByteTokenizer()
  import tokenizers  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer={path!r}: no such file or directory.")
  found, files = _find(path, kind)
  if kind is not None and found != kind:
    raise ValueError(f"tokenizer={path!r}: found a {found} tokenizer in {files[0]}, expected "
                     f"kind={kind!r}.")
  if pad is not None and found != "clip":
    raise ValueError(f"pad={pad!r} is for CLIP tokenizers; {files[0]} holds a {found} one.")
  if found == "clip":
    if len(files) == 1:
      tokenizer = tokenizers.Tokenizer.from_file(files[0])
      # Marked special when the vocabulary has them (CLIPTokenizer says when it does not).
      tokenizer.add_special_tokens([t for t in (CLIP_BOS, CLIP_EOS)
                                    if tokenizer.token_to_id(t) is not None])
    else:
      tokenizer = clip_bpe(*files)
    pad = _configured_pad(os.path.dirname(files[0]), tokenizer) if pad is None else pad
    return CLIPTokenizer(tokenizer, files[0], pad)
  if len(files) == 2:
    return FileTokenizer(tokenizers.ByteLevelBPETokenizer(*files), os.path.dirname(files[0]))
  if files[0].endswith(".json"):
    return FileTokenizer(tokenizers.Tokenizer.from_file(files[0]), files[0])
  return FileTokenizer(tokenizers.BertWordPieceTokenizer(files[0], lowercase=True), files[0])
