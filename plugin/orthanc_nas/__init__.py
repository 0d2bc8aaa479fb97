"""orthanc-nas core: index, search and share the DICOM files of a NAS. Never imports `orthanc`."""

__version__ = "0.1.0"
