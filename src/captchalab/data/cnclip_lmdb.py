"""Chinese-CLIP's LMDB form of a dataset: ``lmdb/{split}/imgs`` and ``lmdb/{split}/pairs``, written and read.

The TSV + JSONL form, which the LMDB is built from, is ``captchalab.data.cnclip``. lmdb is imported where used, so
the package imports without it.
"""

from __future__ import annotations

import io
import mmap
import pickle
import pickletools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from captchalab.data.cnclip import (
    ID_PATTERN,
    Cell,
    decode_b64,
    existing_folder,
    is_int,
    read_texts,
    read_tsv,
    split_files,
)
from captchalab.data.split import SPLITS
from captchalab.errors import CaptchalabError
from captchalab.progress import track

if TYPE_CHECKING:
    import lmdb

_COMMIT_EVERY = 1000


def build_lmdb(dataset_dir: str | Path, splits: Iterable[str] = SPLITS) -> Path:
    """Serialise each split's TSV + JSONL into ``dataset_dir/lmdb/{split}/{imgs,pairs}``; returns the lmdb folder.

    Same layout as Chinese-CLIP's ``cn_clip/preprocess/build_lmdb_dataset.py``:

    - ``pairs``: for every JSONL line in file order and every id of its ``image_ids`` in order, key
      ``str(n).encode("utf-8")`` (n = 0, 1, ...) -> ``pickle.dumps((image_id, text_id, text))``; then
      ``b"num_samples"`` -> ``str(number of pairs).encode("utf-8")``.
    - ``imgs``: for every TSV line, key ``str(image_id).encode("utf-8")`` -> the line's base64 text encoded utf-8;
      then ``b"num_images"`` -> ``str(number of images).encode("utf-8")``.

    Refuses to write into a split folder that already holds files.
    """
    folder = existing_folder(Path(dataset_dir))
    lmdb_dir = folder / "lmdb"
    for split in splits:
        tsv, jsonl = split_files(folder, split)
        images = read_tsv(tsv)
        texts = read_texts(jsonl, images, tsv)
        split_dir = lmdb_dir / split
        if split_dir.is_dir() and any(split_dir.iterdir()):
            raise CaptchalabError(f"{split_dir}: already holds files; remove it to build the LMDB again")
        split_dir.mkdir(parents=True, exist_ok=True)
        # Protocol 4 (the default of the Pythons Chinese-CLIP supports) keeps the bytes the same on every Python.
        pairs = [
            (str(n).encode("utf-8"), pickle.dumps(pair, protocol=4))
            for n, pair in enumerate((i, t.text_id, t.text) for t in texts for i in t.image_ids)
        ]
        _write_env(split_dir / "pairs", pairs, b"num_samples", f"{split} pairs")
        records = [(str(image_id).encode("utf-8"), b64.encode("utf-8")) for image_id, b64 in images.items()]
        _write_env(split_dir / "imgs", records, b"num_images", f"{split} images")
    return lmdb_dir


def _write_env(path: Path, records: list[tuple[bytes, bytes]], count_key: bytes, description: str) -> None:
    import lmdb

    env = lmdb.open(str(path), map_size=_map_size(records))
    try:
        batches = range(0, len(records), _COMMIT_EVERY)
        for start in track(batches, len(batches), f"writing {description}"):
            with env.begin(write=True) as txn:
                for key, value in records[start : start + _COMMIT_EVERY]:
                    txn.put(key, value)
        with env.begin(write=True) as txn:
            txn.put(count_key, str(len(records)).encode("utf-8"))
    finally:
        env.close()


def _map_size(records: list[tuple[bytes, bytes]]) -> int:
    """Twice the data plus a page of overhead per record (large values take whole overflow pages), + 1 MiB."""
    payload = sum(len(key) + len(value) for key, value in records)
    return 2 * (payload + (len(records) + 1) * mmap.PAGESIZE) + (1 << 20)


def read_lmdb_split(lmdb_split_dir: str | Path) -> list[Cell]:
    """The cells of one LMDB split folder (``imgs`` + ``pairs``), in pair order."""
    import lmdb

    folder = existing_folder(Path(lmdb_split_dir))
    pairs_env = _open_env(folder / "pairs")
    try:
        imgs_env = _open_env(folder / "imgs")
    except CaptchalabError:
        pairs_env.close()
        raise
    try:
        with pairs_env.begin() as pairs, imgs_env.begin() as imgs:
            count = _count(pairs, b"num_samples", folder / "pairs")
            _count(imgs, b"num_images", folder / "imgs")
            cells = []
            for index in track(range(count), count, "reading pairs"):
                image_id, text = _pair(pairs.get(str(index).encode("utf-8")), folder / "pairs", index)
                b64 = imgs.get(str(image_id).encode("utf-8"))
                if b64 is None:
                    raise CaptchalabError(
                        f"{folder / 'pairs'}: pair {index} names image {image_id}, which is not in {folder / 'imgs'}"
                    )
                cells.append(Cell(image_id, text, decode_b64(b64, f"{folder / 'imgs'}: image {image_id}")))
    except lmdb.Error as exc:  # a damaged page (MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...)
        raise CaptchalabError(f"{folder}: damaged LMDB ({exc})") from None
    finally:
        pairs_env.close()
        imgs_env.close()
    return cells


def _open_env(path: Path) -> lmdb.Environment:
    import lmdb

    if not path.is_dir():
        raise CaptchalabError(f"{path}: no such LMDB folder")
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, create=False, readahead=False)
    except lmdb.Error as exc:
        raise CaptchalabError(f"{path}: not a readable LMDB environment ({exc})") from None
    # LMDB maps the file and trusts its meta page: reading a page past the end of a truncated file (an interrupted
    # copy) kills the process with SIGBUS, so the file must hold every page the meta page says was written.
    data = path / "data.mdb"
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if data.is_file() and data.stat().st_size < needed:
        env.close()
        raise CaptchalabError(f"{data}: truncated ({data.stat().st_size} of at least {needed} bytes); copy it again")
    return env


def _count(txn: lmdb.Transaction, key: bytes, path: Path) -> int:
    value = txn.get(key)
    if value is None or not ID_PATTERN.fullmatch(bytes(value).decode("ascii", "replace")):
        raise CaptchalabError(f"{path}: no valid {key.decode()} entry; not a Chinese-CLIP LMDB")
    return int(value)


class _PlainUnpickler(pickle.Unpickler):
    """Loads only plain data (tuples, ints, strings): a pair never needs a class, so none is ever imported."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


# The only pickle opcodes a pickled (int, int, str) tuple needs, in any protocol 0-5. Anything else (classes, calls,
# lists, dicts, bytearrays, persistent ids) is refused before unpickling.
_PAIR_OPCODES = frozenset(
    "PROTO FRAME STOP MARK TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_TUPLE INT BININT BININT1 BININT2 LONG LONG1 UNICODE "
    "SHORT_BINUNICODE BINUNICODE BINUNICODE8 MEMOIZE PUT BINPUT LONG_BINPUT GET BINGET LONG_BINGET".split()
)
_MAX_MEMO = 64  # a memo index is an array index to the unpickler: a huge one would allocate gigabytes


def _plain_pickle(value: bytes) -> bool:
    """True when ``value`` is one pickle made only of ``_PAIR_OPCODES`` with small memo indices (not executed)."""
    try:
        for opcode, arg, _ in pickletools.genops(value):
            if opcode.name not in _PAIR_OPCODES:
                return False
            if opcode.name.endswith(("PUT", "GET")) and not (isinstance(arg, int) and 0 <= arg < _MAX_MEMO):
                return False
            if opcode.name == "FRAME" and not (isinstance(arg, int) and arg <= len(value)):
                return False
    except Exception:  # noqa: BLE001 - genops raises ValueError and others on malformed data
        return False
    return True


def _pair(value: bytes | None, path: Path, index: int) -> tuple[int, str]:
    """(image id, text) of a pickled ``(image_id, text_id, text)`` pair; hostile pickles are refused unrun."""
    if value is None:
        raise CaptchalabError(f"{path}: pair {index} is missing")
    pair = None
    if _plain_pickle(bytes(value)):
        try:
            pair = _PlainUnpickler(io.BytesIO(value)).load()
        except Exception:  # noqa: BLE001 - whatever a malformed pickle raises, it is not a pair
            pair = None
    if not (
        isinstance(pair, tuple)
        and len(pair) == 3
        and is_int(pair[0])
        and is_int(pair[1])
        and isinstance(pair[2], str)
        and 0 <= pair[0] < 10**18
    ):
        raise CaptchalabError(f"{path}: pair {index} is not a pickled (image_id, text_id, text)")
    return pair[0], pair[2]
