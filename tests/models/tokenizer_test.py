"""CLIP's BPE (Stable Diffusion 1.x / 2.x) and BERT's WordPiece (LDM txt2img) against their
references: transformers' tokenizers (what diffusers' pipelines run) and open_clip's copy of
OpenAI's original CLIP tokenizer. The CLIP vocabulary is built from the merges file that the
open_clip wheel ships, so nothing is downloaded."""

import json
import os
import shutil
from unittest import mock

import numpy as np
import pytest

from ldm_jax.models import tokenizer as tokenizer_lib
from tests import references

BOS, EOS = 49406, 49407
_LONG = ("a highly detailed matte painting of an ancient castle on a cliff above a stormy sea "
         "at golden hour, dramatic volumetric lighting, crashing waves, seagulls, intricate "
         "stonework, moss, banners fluttering in the wind, by greg rutkowski and alphonse "
         "mucha, trending on artstation, 8k, unreal engine, octane render, cinematic "
         "composition, ultra wide angle, sharp focus, masterpiece, award winning photograph, "
         "hyperrealistic, concept art, epic scale, mist, rain, lightning, fog, ruins, glowing "
         "embers").split()  # 70 words.

# Both references give the same ids for these.
PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on mars, digital art",
    "wow!!!",
    "wow!!!!!!",
    "!!!",
    "!",
    "what?! no way...",
    "it's a dog",
    "we'll see, I'M sure they're fine and you've won, she'd go",
    "IT'S WE'LL THEY'VE",
    "don't can't won't shouldn't",
    "rock 'n' roll 'quoted' ''double''",
    "a well-known self-portrait, state-of-the-art",
    "https://example.com/images?id=42&size=large",
    "user@example.org #hashtag @mention $100 50% off",
    "pi is 3.14159 and 1234.5 and 1,000,000 and 2024-01-31",
    "version 2.0.1b (beta) [draft] {json: true} <html>",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand  double  spaces",
    "\t\n  \n",
    "",
    "café crème brûlée naïve façade",
    "CAFÉ CRÈME ÜBER STRASSE Ærø",
    "e\u0301cole, a decomposed accent",
    "東京タワーの夜景、美しい",
    "一只可爱的小猫在草地上",
    "한국어 문장 테스트",
    "cat 🐱 dog 🐶 pizza 🍕 flags 🇫🇷 family 👨‍👩‍👧",
    "emoji only 😀😀😀",
    "Привет, мир! Красивый закат над МОСКВОЙ",
    "Ελληνικά ΓΡΆΜΜΑΤΑ και σίγμα, ΑΘΗΝΑ",
    "İSTANBUL ıi Straße",
    "no\u00a0break\u3000ideographic\u2003em\u2009thin spaces",
    "form\x0cfeed",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "math: x² + y² = z², ∑ ∫ √2 ≈ 1.414, α β γ",
    "currency €5 £3 ¥100 ₿0.1",
    "symbols © ® ™ § ¶ † ‡ • … ° ± × ÷",
    "under_score and snake_case_name and CamelCaseName",
    "slashes a/b\\c | pipes ~tilde~ `backtick` ^caret^",
    "(((masterpiece))), [[best quality]], {{ultra detailed}}",
    "portrait of a woman:1.2, (bokeh:0.8), 85mm f/1.4",
    "mIxEd CaSe WoRdS aNd ALLCAPS",
    "a" * 40,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "0123456789",
    "a",
    "...",
    "-- dashes — and – en dashes",
    "ümlaut über alles",
    " ".join(["a"] * 75),  # Exactly the 75 content tokens that fit.
    " ".join(["a"] * 76),  # One past them.
    " ".join(_LONG),
    " ".join((_LONG * 2)[:95]),
    " ".join((_LONG * 2)[:120]),
    "!!!!!! " * 40,
]
# Text that open_clip changes before it tokenizes, and transformers (as ours) does not: OpenAI's
# cleanup runs ftfy.fix_text (curly quotes, full-width forms, mojibake, ligatures, control
# characters) and html.unescape; its special tokens are spelled '<end_of_text>', so it splits
# '<|endoftext|>' as text; and Python's str.lower gives a word-final capital sigma 'ς' where
# the `tokenizers` Lowercase normalizer gives 'σ'. Compared with transformers only.
CLEANED_BY_OPEN_CLIP = [
    "it\u2019s \u201cquoted\u201d",
    "salt &amp; pepper &lt;3",
    "full-width ＡＢＣ１２３",
    "mojibake cafÃ© crÃ¨me",
    "\ufb01ne \ufb02ower ligatures",
    "the \u01c5 digraph",
    "vertical\x0btab",
    "<|endoftext|> inside",
    "ΟΔΟΣ ΣΑΣ",
]


@pytest.fixture(scope="module")
def open_clip():
  return references.require("open_clip")


@pytest.fixture(scope="module")
def transformers():
  return references.require("transformers")


@pytest.fixture(scope="module")
def clip_dir(open_clip, tmp_path_factory):
  """CLIP's vocab.json + merges.txt (tests/references.py)."""
  del open_clip
  return references.write_clip_vocab(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def sd2_dir(clip_dir, tmp_path_factory):
  """The same files with the configs of Stable Diffusion 2's tokenizer folder (pad '!')."""
  folder = tmp_path_factory.mktemp("sd2")
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(clip_dir, name), folder / name)
  (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}))
  (folder / "special_tokens_map.json").write_text(json.dumps(
      {"pad_token": {"content": "!", "lstrip": False}, "eos_token": "<|endoftext|>"}))
  return str(folder)


@pytest.fixture(scope="module")
def hf_clip(transformers, clip_dir):
  return transformers.CLIPTokenizer.from_pretrained(clip_dir)


def _hf_ids(tokenizer, texts, max_length=77):
  return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                   return_tensors="np")["input_ids"]


def test_prompts_cover_truncation():
  assert len(PROMPTS) >= 50 and len(set(PROMPTS)) == len(PROMPTS)
  assert sum(len(p.split()) >= 70 for p in PROMPTS) >= 4


def test_clip_sd1_matches_transformers(clip_dir, hf_clip):
  tok = tokenizer_lib.load_tokenizer(clip_dir)
  assert isinstance(tok, tokenizer_lib.CLIPTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49408, BOS, EOS, EOS)
  texts = PROMPTS + CLEANED_BY_OPEN_CLIP
  ours = tok(texts, 77)
  assert ours.shape == (len(texts), 77) and ours.dtype == np.int32
  np.testing.assert_array_equal(ours, _hf_ids(hf_clip, texts))
  assert (ours[:, 0] == BOS).all() and (ours[:, -1] == EOS).sum() == len(texts)  # eos pads.
  assert [tok.decode(row) for row in ours] == hf_clip.batch_decode(ours,
                                                                   skip_special_tokens=True)


def test_clip_sd2_matches_open_clip(open_clip, clip_dir, sd2_dir):
  expected = open_clip.tokenize(PROMPTS, context_length=77).numpy()
  tok = tokenizer_lib.load_tokenizer(sd2_dir)  # special_tokens_map.json's '!' wins.
  assert tok.pad_id == 0
  ours = tok(PROMPTS, 77)
  np.testing.assert_array_equal(ours, expected)
  assert (ours[:, -1] == EOS).sum() == 5  # The 75-token prompt fills its row; 4 are cut.
  for pad in ("zero", 0):
    np.testing.assert_array_equal(tokenizer_lib.load_tokenizer(clip_dir, pad=pad)(PROMPTS, 77),
                                  expected)
  # Shorter contexts truncate the same way (open_clip puts eos over the last kept token).
  np.testing.assert_array_equal(tok(PROMPTS, 8),
                                open_clip.tokenize(PROMPTS, context_length=8).numpy())
  assert tok.decode(ours[PROMPTS.index("wow!!!")]) == "wow !!!"


def test_clip_truncation_warns_once_per_call(clip_dir):
  tok = tokenizer_lib.CLIPTokenizer.from_files(os.path.join(clip_dir, "vocab.json"),
                                               os.path.join(clip_dir, "merges.txt"))
  with mock.patch.object(tokenizer_lib.logging, "warning") as warning:
    tok(["a photo of a cat", " ".join(["a"] * 80), " ".join(["a"] * 76)], 77)
    tok(["a photo of a cat", " ".join(["a"] * 75)], 77)
  warning.assert_called_once()
  message = warning.call_args.args[0] % warning.call_args.args[1:]
  assert message == ("2 of 3 prompts are over the 75 content tokens that max_length=77 "
                     "holds: 6 tokens at their ends were dropped.")
  with pytest.raises(ValueError, match="max_length=2: need room for the 2 special tokens"):
    tok(["a"], 2)
  # Training batches: at most one warning per period (absl counts per call site).
  with mock.patch.object(tokenizer_lib.logging, "warning") as warning, \
      mock.patch.object(tokenizer_lib.logging, "log_every_n_seconds") as throttled:
    for _ in range(3):
      tok([" ".join(["a"] * 80)], 77, warn_every_seconds=600)
  warning.assert_not_called()
  assert throttled.call_count == 3 and throttled.call_args.args[2] == 600


def test_clip_tokenizer_json_round_trip(clip_dir, sd2_dir, hf_clip, tmp_path):
  sd1 = tokenizer_lib.load_tokenizer(clip_dir)
  expected = sd1(PROMPTS, 77)
  (tmp_path / "ours").mkdir()
  sd1.save(str(tmp_path / "ours" / "tokenizer.json"))
  for path in (tmp_path / "ours", tmp_path / "ours" / "tokenizer.json"):
    tok = tokenizer_lib.load_tokenizer(str(path), kind="clip")
    assert isinstance(tok, tokenizer_lib.CLIPTokenizer) and tok.pad_id == EOS
    np.testing.assert_array_equal(tok(PROMPTS, 77), expected)
  # transformers' own files (a diffusers folder with tokenizer.json, pad '<|endoftext|>').
  hf_clip.save_pretrained(str(tmp_path / "hf"))
  tok = tokenizer_lib.load_tokenizer(str(tmp_path / "hf"))
  assert isinstance(tok, tokenizer_lib.CLIPTokenizer) and tok.pad_id == EOS
  np.testing.assert_array_equal(tok(PROMPTS, 77), expected)
  # tokenizer.json beside SD 2's configs pads as they say.
  folder = tmp_path / "sd2"
  shutil.copytree(sd2_dir, folder)
  shutil.copy(tmp_path / "ours" / "tokenizer.json", folder / "tokenizer.json")
  (folder / "vocab.json").unlink()
  tok = tokenizer_lib.load_tokenizer(str(folder))
  assert tok.pad_id == 0
  np.testing.assert_array_equal(tok(PROMPTS, 77), tokenizer_lib.load_tokenizer(sd2_dir)(
      PROMPTS, 77))


def test_wordpiece_matches_bert_tokenizer_fast(transformers, tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "cat",
           "##s", "dog", "hand", "##written", "digit", "seven", "cafe", "red", ".", ",", "!",
           "'", "-", "1", "2", "##3", "it", "s", "well", "known"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  texts = ["A photo of the cats!", "Café, a  RED dog.", "handwritten digit seven 123",
           "it's well-known", "東京 unknownword", "", " ".join(["the red cat"] * 40)]
  reference = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
  expected = _hf_ids(reference, texts)
  tok = tokenizer_lib.load_tokenizer(str(tmp_path), kind="wordpiece")
  ours = tok(texts, 77)
  np.testing.assert_array_equal(ours, expected)
  assert ours[-1, 0] == vocab.index("[CLS]") and ours[-1, 76] == vocab.index("[SEP]")
  assert ours[5].tolist() == [2, 3] + [0] * 75 and tok.pad_id == 0
  assert tok.decode(ours[0]) == "a photo of the cats!"
  # transformers' tokenizer.json of the same vocabulary is recognised as WordPiece.
  reference.save_pretrained(str(tmp_path / "saved"))
  tok = tokenizer_lib.load_tokenizer(str(tmp_path / "saved" / "tokenizer.json"),
                                     kind="wordpiece")
  np.testing.assert_array_equal(tok(texts, 77), expected)


def test_kind_and_file_errors(clip_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.*no such file"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match=r"expected CLIP's tokenizer.json, or its "
                     r"vocab.json \+ merges.txt in this folder; found none of them"):
    tokenizer_lib.load_tokenizer(str(tmp_path), kind="clip")
  shutil.copy(os.path.join(clip_dir, "vocab.json"), tmp_path / "vocab.json")
  with pytest.raises(FileNotFoundError, match=r"found \['vocab.json'\]"):
    tokenizer_lib.load_tokenizer(str(tmp_path), kind="clip")
  with pytest.raises(FileNotFoundError, match="merges.txt: no such file"):
    tokenizer_lib.CLIPTokenizer.from_files(str(tmp_path / "vocab.json"),
                                           str(tmp_path / "merges.txt"))
  # GPT-2's byte-level BPE: no CLIP special tokens, no '</w>'. Read as such when not asked
  # for CLIP.
  gpt2 = tmp_path / "gpt2"
  gpt2.mkdir()
  (gpt2 / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "\u0120": 3,
                                               "<|endoftext|>": 4}))
  (gpt2 / "merges.txt").write_text("#version: 0.2\na b\n")
  with pytest.raises(ValueError, match=r"gpt2.*found a byte-level BPE \(GPT-2 style\) "
                     r"tokenizer in .*vocab.json, expected kind='clip'"):
    tokenizer_lib.load_tokenizer(str(gpt2), kind="clip")
  tok = tokenizer_lib.load_tokenizer(str(gpt2))
  assert not isinstance(tok, tokenizer_lib.CLIPTokenizer) and tok(["ab"], 4)[0, 0] == 2
  with pytest.raises(ValueError, match="not CLIP's vocabulary"):
    tokenizer_lib.CLIPTokenizer.from_files(str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt"))
  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n")
  for path in (bert, bert / "vocab.txt"):
    with pytest.raises(ValueError, match="found a wordpiece tokenizer in .*vocab.txt, "
                       "expected kind='clip'"):
      tokenizer_lib.load_tokenizer(str(path), kind="clip")
  with pytest.raises(ValueError, match="found a clip tokenizer .* expected kind='wordpiece'"):
    tokenizer_lib.load_tokenizer(clip_dir, kind="wordpiece")
  with pytest.raises(ValueError, match="kind='sentencepiece': expected one of"):
    tokenizer_lib.load_tokenizer(clip_dir, kind="sentencepiece")
  with pytest.raises(ValueError, match="kind='clip' reads the tokenizer's files"):
    tokenizer_lib.load_tokenizer(None, kind="clip")
  with pytest.raises(ValueError, match="pad='left': expected 'eos'"):
    tokenizer_lib.load_tokenizer(clip_dir, pad="left")
  with pytest.raises(ValueError, match="pad=0 is for CLIP tokenizers"):
    tokenizer_lib.load_tokenizer(str(bert), pad=0)
  (gpt2 / "vocab.json").write_bytes((tmp_path / "vocab.json").read_bytes())
  (gpt2 / "merges.txt").write_text("#version: 0.2\n")
  (gpt2 / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
  with pytest.raises(ValueError, match="special_tokens_map.json: pad_token='<pad>' is not in"):
    tokenizer_lib.load_tokenizer(str(gpt2))
  assert isinstance(tokenizer_lib.load_tokenizer(None, kind="bytes"),
                    tokenizer_lib.ByteTokenizer)
