"""Every exporter error has one root, ExportError, and is still importable where it was."""
from meteorpi_server.exporter import configs, handshake, resumable
from meteorpi_server.exporter.errors import (
    ConfigExists,
    ConfigNotFound,
    ExportConfigError,
    ExportError,
    TargetError,
    UploadFailed,
    UploadRefused,
)


def test_every_exporter_error_descends_from_export_error():
    for error_class in (TargetError, UploadFailed, UploadRefused, ExportConfigError,
                        ConfigNotFound, ConfigExists):
        assert issubclass(error_class, ExportError)


def test_configuration_errors_are_still_value_errors():
    assert isinstance(ConfigNotFound("nightly"), ValueError)
    assert "nightly" in str(ConfigNotFound("nightly"))


def test_old_import_paths_name_the_same_classes():
    assert handshake.TargetError is TargetError
    assert resumable.UploadFailed is UploadFailed and resumable.UploadRefused is UploadRefused
    assert configs.ConfigNotFound is ConfigNotFound and configs.ExportConfigError is ExportConfigError
