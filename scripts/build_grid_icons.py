#!/usr/bin/env python3
"""Build the picture-grid icon library (build time only; the package never runs this).

Fetches pinned npm packages with ``npm pack`` (CLDR emoji names from ``emojibase-data``, emoji artwork from eleven
Iconify JSON sets and one web font, five of them for training only), chooses a few hundred prompt words and
rasterises each word's icon in every style::

    python scripts/build_grid_icons.py [--out data/grid-icons] [--cache data/npm-cache]

Needs ``npm`` on PATH and ``pip install 'captchalab[build]'`` (cairosvg, fontTools). Writes::

    OUT/icons/<style>/<word>/<slug>.png    128x128 RGBA, transparent background
    OUT/words.json                         styles (package, version, licence, credit), words and their styles

Idempotent: packages already in the cache are not fetched again, icons already drawn are kept (unless their icon
or the pinned versions changed, or ``--force``), and icons of words no longer chosen are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from captchalab.progress import track  # noqa: E402

log = logging.getLogger("build_grid_icons")

EMOJIBASE = ("emojibase-data", "17.0.0")


@dataclass(frozen=True)
class StyleSource:
    """One Iconify JSON emoji set, or (``font_files`` set) an emoji web font drawn glyph by glyph."""

    package: str
    version: str
    names_from: str | None = None  # style whose chars.json to borrow when this set's own is empty (same names)
    compact_names: bool = False  # names without separators (Mozilla fxemoji): extra matching rules
    aliases: dict[str, str] = field(default_factory=dict)  # CLDR English label -> icon name, checked by eye
    # tried after the plain slug: Streamline names its first drawing "cloud-1" and the faces CLDR calls plain
    # "wolf" or "lion" (both emojis are faces) "wolf-face"
    slug_suffixes: tuple[str, ...] = ()
    # a Fontsource web-font package instead of an Iconify set: glob of its unicode-range subset files, and the credit
    # (its package.json has no Iconify info.json); icons are named by code point and matched by it
    font_files: str | None = None
    credit: str = ""


STYLES: dict[str, StyleSource] = {
    "twemoji": StyleSource("@iconify-json/twemoji", "1.2.5"),
    "noto": StyleSource("@iconify-json/noto", "1.2.9"),
    "fluent-emoji-flat": StyleSource("@iconify-json/fluent-emoji-flat", "1.2.6"),
    "fluent-emoji": StyleSource("@iconify-json/fluent-emoji", "1.2.7", names_from="fluent-emoji-flat"),
    "fxemoji": StyleSource(
        "@iconify-json/fxemoji",
        "1.2.2",
        compact_names=True,
        aliases={
            "rabbit face": "bunny",
            "rabbit": "bunnyside",
            "dragon face": "dragonhead",
            "hamster": "hampster",
            "evergreen tree": "evergreen",
            "fallen leaf": "fallingleaf",
            "leaf fluttering in wind": "leaffluttering",
            "fork and knife": "forkknife",
            "front-facing baby chick": "frontfacingchick",
            "sunglasses": "darksunglasses",  # fxemoji's "sunglasses" is the smiley with sunglasses
        },
    ),
    "emojione": StyleSource("@iconify-json/emojione", "1.2.3"),
    "openmoji": StyleSource("@iconify-json/openmoji", "1.2.29"),
    # training-only designs (never a test style): older and monochrome drawings of the same emojis
    "noto-v1": StyleSource("@iconify-json/noto-v1", "1.2.5"),
    "emojione-monotone": StyleSource("@iconify-json/emojione-monotone", "1.2.1", names_from="emojione"),
    "fluent-emoji-high-contrast": StyleSource(
        "@iconify-json/fluent-emoji-high-contrast", "1.2.6", names_from="fluent-emoji-flat"
    ),
    # a tenth design by other hands (hand-drawn, ~200 of the words); no default style is of its family
    "streamline-emojis": StyleSource("@iconify-json/streamline-emojis", "1.2.4", slug_suffixes=("-1", "-face")),
    # Google's monochrome Noto Emoji (2022): new drawings, not the colour Noto's shapes in black
    "noto-emoji-mono": StyleSource(
        "@fontsource/noto-emoji",
        "5.3.2",
        font_files="files/noto-emoji-*-400-normal.woff",
        credit="Noto Emoji (monochrome font) by Google LLC (OFL-1.1), https://github.com/googlefonts/noto-emoji",
    ),
}
DEFAULT_STYLES = ["twemoji", "noto", "fluent-emoji-flat", "fluent-emoji", "fxemoji", "emojione"]
HOLDOUT_STYLE = "openmoji"
# Extra training styles -> the default styles of the same family. A word whose held-out test icon is of that family
# gets no icon in the extra style, so no other drawing by the same designers leaks into its test.
EXTRA_STYLES = {
    "noto-v1": {"noto"},
    "emojione-monotone": {"emojione"},
    "fluent-emoji-high-contrast": {"fluent-emoji", "fluent-emoji-flat"},
    "streamline-emojis": set(),
    "noto-emoji-mono": {"noto"},
}

GROUPS = {3: "animals-nature", 4: "food-drink", 5: "travel-places", 6: "activities", 7: "objects"}
SKIP_SUBGROUPS = {"time"}  # clock faces: 24 near-identical pictures
SKIP_LABEL = re.compile(r"\bmoon\b")  # moon phases and moon faces: near-identical pictures
CJK = re.compile(r"^[\u4e00-\u9fff]+$")
ICON_SIZE = 128
MIN_STYLES = 5  # of the six default styles
MAX_WORDS = 400
MAX_ZH_CHARS = 4


# ---------------------------------------------------------------------------------------------------- fetching
def npm_pack(package: str, version: str, cache: Path) -> Path:
    """The package tarball in ``cache``, fetched with ``npm pack`` unless already there."""
    name = package.lstrip("@").replace("/", "-") + f"-{version}.tgz"
    tarball = cache / name
    if tarball.is_file():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    log.info("npm pack %s@%s", package, version)
    try:
        subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--pack-destination", str(cache)],
            check=True,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        sys.exit("error: npm is not on PATH (needed once, to fetch the emoji packages)")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"error: npm pack {package}@{version} failed: {exc.stderr.strip().splitlines()[-1:]}")
    if not tarball.is_file():
        sys.exit(f"error: npm pack did not write {tarball}")
    return tarball


def read_json(tarball: Path, member: str) -> object:
    with tarfile.open(tarball) as tar:
        handle = tar.extractfile(f"package/{member}")
        if handle is None:
            raise FileNotFoundError(f"{tarball}: no package/{member}")
        return json.load(handle)


# ---------------------------------------------------------------------------------------------------- names
def slugify(label: str) -> str:
    """CLDR English name -> Iconify icon name: ``'cat face'`` -> ``'cat-face'``, ``'piñata'`` -> ``'pinata'``."""
    text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode().lower().replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def compact(label: str) -> str:
    return slugify(label).replace("-", "")


class IconSet:
    """An Iconify JSON set: icon names (aliases resolved) and the SVG of each."""

    def __init__(self, style: str, data: dict, info: dict, chars: dict[str, str]):
        self.style, self.data, self.info, self.chars = style, data, info, chars
        self.icons: dict[str, dict] = data["icons"]
        self.aliases: dict[str, dict] = data.get("aliases", {})

    def has(self, name: str) -> bool:
        return name in self.icons or name in self.aliases

    def resolve(self, name: str) -> tuple[dict, dict]:
        """Icon properties (alias overrides applied) and the flips/rotation an alias chain adds."""
        transform = {"hFlip": False, "vFlip": False, "rotate": 0}
        overrides: list[dict] = []
        seen = set()
        while name in self.aliases:
            if name in seen:
                raise ValueError(f"{self.style}: alias loop at {name}")
            seen.add(name)
            alias = self.aliases[name]
            overrides.append(alias)
            name = alias["parent"]
        icon = dict(self.icons[name])
        for alias in reversed(overrides):  # the nearest alias wins
            icon.update({k: v for k, v in alias.items() if k in ("left", "top", "width", "height")})
        for part in [icon, *overrides]:
            transform["hFlip"] ^= bool(part.get("hFlip", False))
            transform["vFlip"] ^= bool(part.get("vFlip", False))
            transform["rotate"] += int(part.get("rotate", 0))
        return icon, transform

    def svg(self, name: str) -> tuple[str, dict]:
        icon, transform = self.resolve(name)
        left, top = icon.get("left", self.data.get("left", 0)), icon.get("top", self.data.get("top", 0))
        width, height = icon.get("width", self.data.get("width", 16)), icon.get("height", self.data.get("height", 16))
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}" width="{ICON_SIZE}" height="{ICON_SIZE}">{icon["body"]}</svg>'
        )
        return svg, transform

    def draw(self, name: str) -> Image.Image:
        return rasterise(*self.svg(name))


class FontSet:
    """An emoji web font split into unicode-range subset files: icon name = code point (lower-case hex), drawn in
    black on transparent, scaled to fit the icon box like the Iconify sets' artwork."""

    def __init__(self, style: str, fonts: list[bytes]):
        from fontTools.ttLib import TTFont

        self.style, self.fonts = style, fonts
        self.where: dict[str, int] = {}  # icon name -> index of the subset file that maps it
        for index, data in enumerate(fonts):
            for codepoint in TTFont(io.BytesIO(data)).getBestCmap():
                self.where.setdefault(f"{codepoint:04x}", index)
        self.chars = {name: name for name in self.where}  # hexcode -> icon name, as an Iconify chars.json

    def has(self, name: str) -> bool:
        return name in self.where

    def draw(self, name: str) -> Image.Image:
        from PIL import ImageDraw, ImageFont

        font = ImageFont.truetype(io.BytesIO(self.fonts[self.where[name]]), 2 * ICON_SIZE)
        canvas = Image.new("L", (3 * ICON_SIZE, 3 * ICON_SIZE), 0)
        ImageDraw.Draw(canvas).text((1.5 * ICON_SIZE, 1.5 * ICON_SIZE), chr(int(name, 16)), font=font, fill=255,
                                    anchor="mm")  # fmt: skip
        box = canvas.getbbox()
        if box is None:
            raise ValueError(f"{self.style}: glyph {name} draws nothing")
        ink = canvas.crop(box)
        scale = 0.9 * ICON_SIZE / max(ink.size)  # the Iconify emoji fill ~90 % of their box
        size = (max(1, round(ink.width * scale)), max(1, round(ink.height * scale)))
        ink = ink.resize(size, Image.Resampling.LANCZOS)
        alpha = Image.new("L", (ICON_SIZE, ICON_SIZE), 0)
        alpha.paste(ink, ((ICON_SIZE - ink.width) // 2, (ICON_SIZE - ink.height) // 2))
        image = Image.new("RGBA", (ICON_SIZE, ICON_SIZE), (0, 0, 0, 0))
        image.putalpha(alpha)
        return image


def read_fonts(tarball: Path, pattern: str) -> list[bytes]:
    """The package's font files matching ``pattern`` (a glob under package/), in name order."""
    from fnmatch import fnmatch

    with tarfile.open(tarball) as tar:
        members = sorted((m for m in tar.getmembers() if fnmatch(m.name, f"package/{pattern}")), key=lambda m: m.name)
        fonts = [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]
    if not fonts:
        raise FileNotFoundError(f"{tarball}: no package/{pattern}")
    return fonts


def match_name(
    emoji: dict,
    icons: IconSet | FontSet,
    source: StyleSource,
    chars: dict[str, str],
    slugs: frozenset[str] = frozenset(),
) -> tuple[str | None, str]:
    """The icon name of an emojibase entry in a set, and how it was found (chars, slug, alias, compact).
    ``slugs``: every candidate's slug; a suffixed name that is another emoji's own slug ("tiger-face") is not taken."""
    hexcode = emoji["hexcode"].lower()
    for code in (hexcode, hexcode.replace("-fe0f", "")):
        if chars.get(code) and icons.has(chars[code]):
            return chars[code], "chars"
    label = emoji["label"]
    if label in source.aliases and icons.has(source.aliases[label]):
        return source.aliases[label], "alias"
    slug = slugify(label)
    if icons.has(slug):
        return slug, "slug"
    for suffix in source.slug_suffixes:
        if slug + suffix not in slugs and icons.has(slug + suffix):
            return slug + suffix, "slug" + suffix
    if source.compact_names:
        # fxemoji: "<animal>" is the face and "<animal>side" the whole animal, where both exist
        if icons.has(compact(label) + "side"):
            return compact(label) + "side", "compact"
        if label.endswith(" face") and icons.has(compact(label[:-5]) + "side"):
            return compact(label[:-5]), "compact"
        codepoints = [int(c, 16) for c in hexcode.split("-") if c != "fe0f"]
        names = [compact(label)]
        if len(codepoints) == 1:
            names.append(compact(unicodedata.name(chr(codepoints[0]), "")))
        for name in names:
            if name and icons.has(name):
                return name, "compact"
    return None, ""


# ---------------------------------------------------------------------------------------------------- choosing
def candidates(en: list[dict], zh: dict[str, dict], subgroups: dict[int, str]) -> list[dict]:
    """Plain emojis (no ZWJ, keycaps, skin tones) of the chosen groups with a short all-Chinese label."""
    out = []
    for emoji in en:
        if emoji.get("group") not in GROUPS or subgroups.get(emoji.get("subgroup")) in SKIP_SUBGROUPS:
            continue
        codes = emoji["hexcode"].upper().split("-")
        if "200D" in codes or "20E3" in codes or len([c for c in codes if c != "FE0F"]) != 1:
            continue
        if SKIP_LABEL.search(emoji["label"]):
            continue
        word = zh.get(emoji["hexcode"], {}).get("label", "")
        if not CJK.match(word) or len(word) > MAX_ZH_CHARS:
            continue
        out.append({**emoji, "word": word})
    counts: dict[str, int] = {}
    for item in out:
        counts[item["word"]] = counts.get(item["word"], 0) + 1
    return [item for item in out if counts[item["word"]] == 1]  # a word that names two emojis is no prompt


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def assign_test_styles(words: list[dict]) -> None:
    """Each word's held-out test style: words in hash order take their least-used style (ties by hash)."""
    used = dict.fromkeys(DEFAULT_STYLES, 0)
    for word in sorted(words, key=lambda w: _hash(w["word"])):
        options = [s for s in word["styles"] if s in used]
        style = min(options, key=lambda s: (used[s], _hash(word["word"] + "/" + s)))
        word["test_style"] = style
        used[style] += 1


def drop_same_family_extras(words: list[dict]) -> None:
    """Remove a word's extra (training-only) styles drawn by the family of its held-out test style."""
    for word in words:
        for style, family in EXTRA_STYLES.items():
            if word["test_style"] in family and style in word["styles"]:
                word["styles"].remove(style)
                del word["icons"][style]


def related_words(words: list[dict]) -> None:
    """Words a human could take for each other (猫 / 猫脸, book / green book): never each other's negatives."""
    tokens = {w["word"]: set(w["en"].lower().replace("-", " ").split()) for w in words}
    for word in words:
        a = word["word"]
        word["related"] = sorted(
            b for b in tokens if b != a and (a in b or b in a or tokens[a] <= tokens[b] or tokens[b] <= tokens[a])
        )


# ---------------------------------------------------------------------------------------------------- drawing
def rasterise(svg: str, transform: dict) -> Image.Image:
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg.encode("utf-8"), output_width=ICON_SIZE, output_height=ICON_SIZE)
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    if transform["hFlip"]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if transform["vFlip"]:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if transform["rotate"] % 4:
        image = image.rotate(-90 * (transform["rotate"] % 4))
    return image


def build(out: Path, cache: Path, max_words: int, force: bool) -> dict:
    start = time.monotonic()
    try:
        import cairosvg  # noqa: F401
        import fontTools  # noqa: F401
    except ImportError as exc:
        sys.exit(f"error: {exc.name} is missing: pip install 'captchalab[build]'")
    emojibase = npm_pack(*EMOJIBASE, cache)
    en = read_json(emojibase, "en/data.json")
    zh = {e["hexcode"]: e for e in read_json(emojibase, "zh/data.json")}
    subgroups = {s["order"]: s["key"] for s in read_json(emojibase, "en/messages.json")["subgroups"]}
    labels_licence = read_json(emojibase, "package.json").get("license", "")

    sets: dict[str, IconSet | FontSet] = {}
    styles_meta: dict[str, dict] = {}
    for style, source in STYLES.items():
        tarball = npm_pack(source.package, source.version, cache)
        if source.font_files:
            sets[style] = FontSet(style, read_fonts(tarball, source.font_files))
            licence = read_json(tarball, "package.json").get("license", "")
            styles_meta[style] = {"package": source.package, "version": source.version, "license": licence,
                                  "credit": source.credit}  # fmt: skip
            continue
        info = read_json(tarball, "info.json")
        sets[style] = IconSet(style, read_json(tarball, "icons.json"), info, read_json(tarball, "chars.json"))
        author = info.get("author", {})
        styles_meta[style] = {
            "package": source.package,
            "version": source.version,
            "license": info["license"].get("spdx") or info["license"].get("title", ""),
            "credit": f"{info.get('name', style)} by {author.get('name', '?')} ({info['license'].get('title', '')}),"
            f" {author.get('url', '')}".rstrip(", "),
        }

    chosen = candidates(en, zh, subgroups)
    log.info(
        "%d candidate emojis (groups %s, zh label of 1-%d characters)",
        len(chosen),
        "/".join(GROUPS.values()),
        MAX_ZH_CHARS,
    )
    matched: dict[str, dict[str, str]] = {}  # hexcode -> style -> icon name
    report: dict[str, dict[str, int]] = {}
    slugs = frozenset(slugify(emoji["label"]) for emoji in en)
    for style, source in STYLES.items():
        chars = sets[source.names_from].chars if source.names_from else sets[style].chars
        how_counts: dict[str, int] = {}
        disagree = []
        for emoji in chosen:
            name, how = match_name(emoji, sets[style], source, chars, slugs)
            if name is None:
                continue
            matched.setdefault(emoji["hexcode"], {})[style] = name
            how_counts[how] = how_counts.get(how, 0) + 1
            if how == "chars" and name != slugify(emoji["label"]) and not source.font_files:  # fonts: code points
                disagree.append(f"{emoji['label']}->{name}")
        report[style] = how_counts
        log.info(
            "%-17s matched %3d of %d (%s)%s",
            style,
            sum(how_counts.values()),
            len(chosen),
            ", ".join(f"{k} {v}" for k, v in sorted(how_counts.items())),
            f"; chars.json name differs from the CLDR slug for {', '.join(disagree)}" if disagree else "",
        )

    words = []
    for emoji in chosen:
        names = matched.get(emoji["hexcode"], {})
        default = [s for s in DEFAULT_STYLES if s in names]
        if len(default) < MIN_STYLES:
            continue
        words.append(
            {
                "word": emoji["word"],
                "en": emoji["label"],
                "emoji": emoji["emoji"],
                "slug": slugify(emoji["label"]),
                "group": GROUPS[emoji["group"]],
                "subgroup": subgroups.get(emoji["subgroup"], ""),
                "hexcode": emoji["hexcode"],
                "styles": [s for s in STYLES if s in names],
                "icons": {s: names[s] for s in STYLES if s in names},  # Iconify icon name per style
                "_rank": (len(emoji["word"]) > 2, -len(default), emoji.get("order", 0)),
            }
        )
    log.info("%d words in at least %d of the %d default styles", len(words), MIN_STYLES, len(DEFAULT_STYLES))
    if len(words) > max_words:  # shortest words in most styles first, then emojibase order
        keep = {w["word"] for w in sorted(words, key=lambda w: w["_rank"])[:max_words]}
        words = [w for w in words if w["word"] in keep]
    assign_test_styles(words)
    drop_same_family_extras(words)
    related_words(words)

    library = {
        "format": "captchalab-grid-icons",
        "icon_size": ICON_SIZE,
        "labels": {
            "package": EMOJIBASE[0],
            "version": EMOJIBASE[1],
            "license": labels_licence,
            "credit": "Emoji names: Unicode CLDR via emojibase-data (Miles Johnson)",
        },
        "styles": styles_meta,
        "default_styles": DEFAULT_STYLES,
        "holdout_style": HOLDOUT_STYLE,
        "extra_styles": {style: sorted(family) for style, family in EXTRA_STYLES.items()},
        "words": [],
    }
    words_file = out / "words.json"
    drawn_before: dict[tuple[str, str], str] = {}  # (word, style) -> icon name drawn by the last build
    if words_file.is_file() and not force:
        try:
            old = json.loads(words_file.read_text(encoding="utf-8"))
            if old.get("styles") == styles_meta and old.get("icon_size") == ICON_SIZE:
                drawn_before = {(w["word"], s): n for w in old["words"] for s, n in w.get("icons", {}).items()}
            else:
                log.info("pinned versions changed since the last build: drawing every icon again")
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            log.info("%s is unreadable: drawing every icon again", words_file)

    jobs = [(w, s) for w in words for s in w["styles"]]
    drawn = kept = failed = 0
    for word, style in track(jobs, len(jobs), "drawing icons"):
        path = out / "icons" / style / word["word"] / f"{word['slug']}.png"
        if path.is_file() and drawn_before.get((word["word"], style)) == word["icons"][style]:
            kept += 1
            continue
        try:
            image = sets[style].draw(word["icons"][style])
        except Exception as exc:  # a malformed SVG (or glyph) in one set must not stop the build
            log.warning("%s %s: cannot draw (%s)", style, word["en"], exc)
            word["styles"].remove(style)
            del word["icons"][style]
            failed += 1
            continue
        if image.getchannel("A").getbbox() is None:
            log.warning("%s %s: drew an empty icon, left out", style, word["en"])
            word["styles"].remove(style)
            del word["icons"][style]
            failed += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
        drawn += 1
    short = [w for w in words if sum(s in w["styles"] for s in DEFAULT_STYLES) < MIN_STYLES]
    if short:  # icons that failed to draw left these words in too few styles
        log.warning("left out %d word(s) now in too few styles: %s", len(short), ", ".join(w["en"] for w in short))
        words = [w for w in words if w not in short]
    wanted = {out / "icons" / s / w["word"] / f"{w['slug']}.png" for w in words for s in w["styles"]}
    removed = 0
    for stale in sorted((out / "icons").rglob("*.png")) if (out / "icons").is_dir() else []:
        if stale not in wanted:
            stale.unlink()
            removed += 1
    for folder in sorted((out / "icons").rglob("*"), reverse=True) if (out / "icons").is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    for word in words:
        if word["test_style"] not in word["styles"]:  # only if an icon failed to draw
            assign_test_styles([word])
        library["words"].append({k: v for k, v in word.items() if not k.startswith("_")})
    out.mkdir(parents=True, exist_ok=True)
    words_file.write_text(json.dumps(library, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    per_style = {s: sum(s in w["styles"] for w in words) for s in STYLES}
    per_test = {s: sum(w["test_style"] == s for w in words) for s in DEFAULT_STYLES}
    per_group = {g: sum(w["group"] == g for w in words) for g in GROUPS.values()}
    elapsed = time.monotonic() - start
    log.info("icons per style: %s", ", ".join(f"{s} {n}" for s, n in per_style.items()))
    log.info("test style per word: %s", ", ".join(f"{s} {n}" for s, n in per_test.items()))
    log.info("words per group: %s", ", ".join(f"{g} {n}" for g, n in per_group.items()))
    log.info(
        "wrote %s: %d words, %d icons (%d drawn, %d kept, %d removed, %d failed) in %.0f s",
        out,
        len(words),
        len(wanted),
        drawn,
        kept,
        removed,
        failed,
        elapsed,
    )
    return {"words": len(words), "icons": len(wanted), "per_style": per_style, "matched": report, "seconds": elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/grid-icons"), help="library folder to write")
    parser.add_argument("--cache", type=Path, default=Path("data/npm-cache"), help="where npm pack puts tarballs")
    parser.add_argument("--max-words", type=int, default=MAX_WORDS, help="at most this many words")
    parser.add_argument("--force", action="store_true", help="draw every icon again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    build(args.out, args.cache, args.max_words, args.force)


if __name__ == "__main__":
    main()
