"""A mixed-language text corpus for tokenizer tests and bench/tokenizer.py, built offline.

Real English prose and Python code come from the standard library's own sources; Korean, Chinese
and Japanese come from sentences written for this project plus the translated UI strings gradio
ships; random Hangul/CJK runs reach rare characters that split into byte tokens; NFD-decomposed
Korean exercises the NFC normaliser; emoji sequences (ZWJ, skin tones, flags) and whitespace
edge cases (tabs, CRLF, runs of spaces and newlines) complete it. Deterministic for a seed.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import random
import re
import unicodedata

KOREAN = [
    "빨간 원 두 개가 파란 배경 위에서 왼쪽에서 오른쪽으로 천천히 움직입니다.",
    "이 영상에는 노란색 삼각형 하나가 아래에서 위로 빠르게 올라가는 모습이 담겨 있습니다.",
    "작은 초록색 사각형 세 개가 회색 배경에서 대각선 방향으로 이동하고 있어요.",
    "안녕하세요, 반갑습니다. 오늘은 날씨가 맑고 바람이 조금 붑니다.",
    "연구자들은 자신이 촬영한 동영상에 한국어와 영어로 자막을 붙이고 싶어 합니다.",
    "모델은 프레임을 여덟 장 뽑아서 장면을 설명하고, 생각 모드에서는 먼저 추론합니다.",
    "서울의 밤거리에는 사람들이 붐비고, 네온사인이 깜빡이며 빛나고 있었다.",
    "고양이가 창가에 앉아 햇볕을 쬐다가 갑자기 뛰어내려 부엌으로 달려갔다.",
    "\"그게 정말이야?\" 그녀가 물었다. '아마도 그럴 거야,' 그가 대답했다.",
    "2025년 4월 29일, 큐웬3 모델이 공개되었고 0.6B부터 235B까지 여러 크기가 있습니다.",
    "숫자 1,234,567과 3.14159, 그리고 100%라는 표현도 토큰화해야 합니다.",
    "뷁, 똠방각하, 쀍 같은 드문 음절은 여러 바이트 토큰으로 나뉠 수 있습니다.",
]
CHINESE = [
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "两个红色的圆形在蓝色背景上从左向右缓慢移动。",
    "研究人员希望用中文、韩文和英文为自己的视频生成字幕。",
    "模型从视频中均匀采样八帧，然后逐字生成描述。",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
]
JAPANESE = [
    "こんにちは世界",
    "赤い丸が二つ、青い背景の上を左から右へゆっくり動いています。",
    "この動画には、黄色い三角形が下から上へ素早く移動する様子が映っています。",
    "東京の夜はとても賑やかで、カタカナのネオンサインがキラキラ光っていた。",
    "ひらがなとカタカナと漢字がまざった文章をトークン化します。",
]
EMOJI = ["😀", "🎬", "🐱", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🇰🇷", "🇺🇸", "❤️", "🔥", "✨", "🤖", "🏳️‍🌈", "🧑🏿‍🚀"]
WHITESPACE = [" ", "  ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n", "\n \n", "   \n\n\n", "\u3000", "\xa0"]
STDLIB_MODULES = ["argparse", "json.decoder", "textwrap", "collections", "dataclasses", "pathlib", "csv",
                  "unittest.case", "http.client", "email.message", "logging", "tempfile", "shutil", "string"]


def gradio_locale_strings() -> list[str]:
    """Translated UI strings (Korean, Chinese, Japanese) shipped inside the gradio package."""
    import importlib.util

    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = spec.submodule_search_locations[0]
    strings: list[str] = []
    for lang in ("ko", "zh-CN", "zh-TW", "ja"):
        for path in glob.glob(os.path.join(root, "templates", "frontend", "assets", f"{lang}-*.js"))[:1]:
            text = open(path, encoding="utf-8").read()
            strings += [s for s in re.findall(r'"((?:[^"\\]|\\.)*)"', text) if re.search(r"[^\x00-\x7f]", s)]
    return strings


def stdlib_text() -> list[str]:
    """English docstrings, comments and Python code from the standard library."""
    import importlib

    chunks = []
    for name in STDLIB_MODULES:
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (OSError, TypeError, ImportError):
            continue
        chunks += [block for block in source.split("\n\n") if block.strip()]
    return chunks


def mixed_corpus(min_chars: int = 450_000, seed: int = 0) -> list[str]:
    """Documents (strings) of mixed languages, code, emoji and whitespace; ~100k+ tokens by default."""
    rng = random.Random(seed)
    english_and_code = stdlib_text()
    locale = gradio_locale_strings()
    docs: list[str] = []
    total = 0

    def random_run(lo: int, hi: int, n: int) -> str:
        return "".join(chr(rng.randint(lo, hi)) for _ in range(n))

    makers = [
        lambda: rng.choice(english_and_code),
        lambda: " ".join(rng.choices(KOREAN, k=rng.randint(1, 4))),
        lambda: unicodedata.normalize("NFD", " ".join(rng.choices(KOREAN, k=2))),  # decomposed jamo
        lambda: "".join(rng.choices(CHINESE, k=rng.randint(1, 3))),
        lambda: "".join(rng.choices(JAPANESE, k=rng.randint(1, 3))),
        lambda: rng.choice(locale) if locale else rng.choice(KOREAN),
        lambda: random_run(0xAC00, 0xD7A3, rng.randint(2, 30)),  # any Hangul syllable, rare ones too
        lambda: random_run(0x4E00, 0x9FFF, rng.randint(2, 20)),  # CJK ideographs
        lambda: "".join(rng.choices(EMOJI, k=rng.randint(1, 6))),
        lambda: "".join(rng.choices(WHITESPACE, k=rng.randint(1, 5))),
        lambda: json.dumps({"name": rng.choice(KOREAN)[:8], "value": rng.random()}, ensure_ascii=False),
    ]
    weights = [10, 4, 1, 2, 2, 2, 1, 1, 1, 2, 1]
    while total < min_chars:
        parts = [maker() for maker in rng.choices(makers, weights=weights, k=rng.randint(1, 6))]
        glue = rng.choice(["", " ", "\n", "  ", "\n\n", "\t"])
        doc = glue.join(parts)
        docs.append(doc)
        total += len(doc)
    return docs
