"""The photos `caption --ray` captions: files, folders, URIs (s3://, gs://, file://...) and
.parquet/.csv manifests with a `path` column, each photo once, in input order. Ray is not needed
here; remote files are listed through pyarrow's filesystems (the `ray` extra brings pyarrow)."""
from __future__ import annotations

import functools
import os
import posixpath
import re
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..data.images import IMAGE_EXTENSIONS, find_images, resolved_paths
from ..errors import CaptionerError

MANIFEST_SUFFIXES = (".parquet", ".csv")


def is_uri(text: str) -> bool:
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


@functools.lru_cache(maxsize=64)
def _location(root: str):
    """The pyarrow filesystem behind `scheme://host` and the prefix its paths there carry ("bucket/" on S3, "/" for file://)."""
    from pyarrow import fs

    try:
        filesystem, probe = fs.FileSystem.from_uri(root + "/_")
    except (OSError, ValueError) as error:
        raise CaptionerError(f"cannot open {root} ({error}); check the URI and the credentials for it") from None
    return filesystem, probe[:-1]


def resolve_uri(uri: str):
    """A URI -> (pyarrow filesystem, its path there); one filesystem per bucket or host, reused."""
    parts = urlsplit(uri)
    filesystem, prefix = _location(f"{parts.scheme}://{parts.netloc}")
    return filesystem, prefix + unquote(parts.path).lstrip("/")


def _uri_of(root: str, prefix: str, path: str) -> str:
    return f"{root}/{path[len(prefix):]}"


def _find_uri_images(uri: str) -> tuple[list[str], list[str]]:
    """An image URI, or every image under a folder URI (recursively, sorted)."""
    from pyarrow import fs

    filesystem, path = resolve_uri(uri)
    parts = urlsplit(uri)
    root = f"{parts.scheme}://{parts.netloc}"
    prefix = _location(root)[1]
    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            return [uri], []
        if info.type != fs.FileType.Directory:
            return [], [f"{uri}: no such file or folder"]
        found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except OSError as error:
        return [], [f"{uri}: cannot list it ({error})"]
    images = sorted(_uri_of(root, prefix, item.path) for item in found if item.type == fs.FileType.File and posixpath.splitext(item.path)[1].lower() in IMAGE_EXTENSIONS)
    return images, [] if images else [f"{uri}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"]


def read_manifest(manifest: str) -> list[str]:
    """The photo paths in a .parquet or .csv manifest's `path` column; relative ones are relative to the manifest's folder."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if is_uri(manifest):
            filesystem, inner = resolve_uri(manifest)
            source = filesystem.open_input_file(inner)
        else:
            source = open(manifest, "rb")
        with source:
            if manifest.lower().endswith(".parquet"):
                table = pyarrow.parquet.read_table(source)
            else:
                table = pyarrow.csv.read_csv(source, convert_options=pyarrow.csv.ConvertOptions(column_types={"path": pa.string()}))
    except FileNotFoundError:
        raise CaptionerError(f"{manifest}: no such manifest") from None
    except (OSError, pa.ArrowException) as error:
        raise CaptionerError(f"{manifest}: cannot read this manifest ({error}); pass a .parquet or .csv file with a 'path' column") from None
    if "path" not in table.column_names:
        raise CaptionerError(f"{manifest}: no 'path' column (it has: {', '.join(table.column_names) or 'none'}); name the column of photo paths 'path'")
    values = table.column("path").to_pylist()
    empty = [number for number, value in enumerate(values, 1) if not isinstance(value, str) or not value.strip()]
    if empty:
        raise CaptionerError(f"{manifest}: row {empty[0]} has no path ({len(empty)} rows without one); every row needs a photo path")
    if is_uri(manifest):
        folder = posixpath.dirname(manifest)
        return [value if is_uri(value) else posixpath.join(folder, value) for value in values]
    return [value if is_uri(value) else str(Path(os.path.dirname(manifest), value)) for value in values]


def missing_photos(paths: list[str]) -> list[str]:
    """The paths that are not files, in order; remote ones found by listing each folder once, not a request per photo."""
    from pyarrow import fs

    missing = {path for path in paths if not is_uri(path) and not os.path.isfile(path)}
    folders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for uri in filter(is_uri, paths):
        parts = urlsplit(uri)
        folders[(f"{parts.scheme}://{parts.netloc}", posixpath.dirname(resolve_uri(uri)[1]))].append(uri)
    for (root, folder), uris in folders.items():
        filesystem, _ = _location(root)
        try:
            files = {item.path for item in filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True)) if item.type == fs.FileType.File}
        except OSError:
            files = set()
        missing.update(uri for uri in uris if resolve_uri(uri)[1] not in files)
    return [path for path in paths if path in missing]


def photo_list(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Every photo to caption, each once, in input order, and a problem message per input that gave none.
    A manifest naming a photo that does not exist is refused whole, before any work."""
    photos: list[str] = []
    problems: list[str] = []
    for given in inputs:
        if given.lower().endswith(MANIFEST_SUFFIXES):
            listed = read_manifest(given)
            missing = missing_photos(listed)
            if missing:
                raise CaptionerError(f"{given}: {len(missing)} of {len(listed)} photos do not exist (first: {missing[0]}); fix the manifest or restore the files")
            photos.extend(listed)
        elif is_uri(given):
            found, trouble = _find_uri_images(given)
            photos.extend(found)
            problems.extend(trouble)
        else:
            found, trouble = find_images([given])
            photos.extend(str(path) for path in found)
            problems.extend(trouble)
    first: dict[str, str] = {}  # each photo under the first name it was given by
    for key, photo in zip(photo_keys(photos), photos):
        first.setdefault(key, photo)
    return list(first.values()), problems


def photo_keys(paths) -> list[str]:
    """What tells two names of one photo apart from two photos: a URI as it is, a local path resolved (`resolved_paths`)."""
    paths = list(paths)
    local = iter(resolved_paths([path for path in paths if not is_uri(path)]))
    return [path if is_uri(path) else next(local) for path in paths]
