"""Writing made-up series straight into a catalog, for tests of what reads it (no DICOM files)."""

from __future__ import annotations

from orthanc_nas.catalog import Catalog
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.headers import FIELDS
from orthanc_nas.sources import FileEntry


def record(**fields) -> dict:
    """A parsed header as the indexer gets it: every attribute present, None unless given."""
    values = {keyword: None for keyword in (*FIELDS, "TransferSyntaxUID") if keyword != "SpecificCharacterSet"}
    unknown = set(fields) - set(values)
    assert not unknown, f"not an indexed attribute: {unknown}"
    values.update(fields)
    return values


def write(catalog: Catalog, files: list[tuple[str, dict]], writer: CatalogWriter | None = None) -> None:
    """Store `(path, record)` pairs in one batch, as one indexing write does."""
    own = writer is None
    writer = writer or CatalogWriter(catalog)
    try:
        writer.write([(FileEntry(path, 1000 + i, 1), rec, None) for i, (path, rec) in enumerate(files)])
    finally:
        if own:
            writer.close()
