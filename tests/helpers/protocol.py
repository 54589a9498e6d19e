"""Speaking the import protocols (legacy and v2) through Flask's test client."""
from __future__ import annotations

import io
import uuid

from meteorpi_model import md5_bytes
from meteorpi_server.imports.bundles import MEDIA_TYPE as BUNDLE_MEDIA_TYPE
from meteorpi_server.imports.bundles import header_line


class ProtocolClient:
    def __init__(self, client, auth):
        self.client = client
        self.auth = auth

    def post(self, document, expect: int = 200) -> dict:
        response = self.client.post("/import", json=document, auth=self.auth)
        assert response.status_code == expect, response.get_data(as_text=True)
        return response.get_json()

    def send(self, entity) -> dict:
        return self.post({"type": entity.ENTITY_TYPE, entity.ENTITY_TYPE: entity.to_dict()})

    def send_cached(self, entity_id: uuid.UUID) -> dict:
        return self.post({"type": "cached_entity", "cached_entity_id": entity_id.hex})

    def upload(self, file_id: uuid.UUID, data: bytes, md5: str | None = None,
               expect: int = 200) -> dict:
        response = self.client.post(
            f"/import/data/{file_id.hex}/{md5 or md5_bytes(data)}", auth=self.auth,
            data={"file": (io.BytesIO(data), "upload.bin")}, content_type="multipart/form-data")
        assert response.status_code == expect, response.get_data(as_text=True)
        return response.get_json()

    def replicate(self, entity, statuses: dict, contents: dict) -> list[str]:
        """Follow the replies as a legacy exporter does; returns the states seen."""
        states = []
        reply = self.send(entity)
        for _ in range(50):
            states.append(reply["state"])
            if reply["state"] in ("complete", "failed"):
                return states
            if reply["state"] == "need_status":
                reply = self.send(statuses[uuid.UUID(reply["status_id"])])
            elif reply["state"] == "need_file_data":
                reply = self.upload(uuid.UUID(reply["file_id"]), contents[uuid.UUID(reply["file_id"])])
            elif reply["state"] == "continue":
                reply = self.send_cached(entity.id)
            elif reply["state"] == "continue-nocache":
                reply = self.send(entity)
        raise AssertionError(f"no end after {states}")


def chunk_checksum(data: bytes, algorithm: str = "sha256") -> str:
    import base64
    import hashlib

    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


class ResumableClient:
    """The resumable upload protocol through Flask's test client."""

    def __init__(self, client, auth):
        self.client = client
        self.auth = auth

    def state(self, file_id: uuid.UUID, md5: str):
        return self.client.get(f"/import/data/{file_id.hex}/{md5}", auth=self.auth)

    def chunk(self, file_id: uuid.UUID, md5: str, offset: int, length: int, data: bytes,
              checksum: str | None = None, **headers):
        headers = {"Upload-Offset": str(offset), "Upload-Length": str(length), **headers}
        if checksum:
            headers["Upload-Checksum"] = checksum
        return self.client.patch(f"/import/data/{file_id.hex}/{md5}", data=data, auth=self.auth,
                                 headers=headers, content_type="application/offset+octet-stream")

    def send_all(self, file_id: uuid.UUID, data: bytes, chunk_size: int, md5: str | None = None):
        md5 = md5 or md5_bytes(data)
        response = None
        for offset in range(0, max(len(data), 1), chunk_size):
            piece = data[offset:offset + chunk_size]
            response = self.chunk(file_id, md5, offset, len(data), piece, chunk_checksum(piece))
            assert response.status_code == 200, response.get_json()
        return response


class BatchClient:
    def __init__(self, client, auth):
        self.client, self.auth = client, auth

    def post(self, operation: str, document, expect: int = 200) -> dict:
        response = self.client.post(f"/import/batch/{operation}", json=document, auth=self.auth)
        assert response.status_code == expect, response.get_data(as_text=True)
        return response.get_json()

    def plan(self, *entities) -> dict:
        return self.post("plan", {"entities": [plan_entry(entity) for entity in entities]})

    def statuses(self, *statuses) -> dict:
        return self.post("statuses", {"statuses": [status.to_dict() for status in statuses]})

    def files(self, body: bytes, expect: int = 200, content_type: str = BUNDLE_MEDIA_TYPE) -> dict:
        response = self.client.post("/import/batch/files", data=body, auth=self.auth,
                                    content_type=content_type)
        assert response.status_code == expect, response.get_data(as_text=True)
        return response.get_json()

    def records(self, *entities) -> dict:
        return self.post("records", {"entities": [
            {"type": entity.ENTITY_TYPE, entity.ENTITY_TYPE: entity.to_dict()} for entity in entities]})


def plan_entry(entity) -> dict:
    if entity.ENTITY_TYPE == "file":
        return {"type": "file", "id": entity.file_id.hex, "status_id": entity.status_id.hex,
                "md5": entity.md5}
    return {"type": "event", "id": entity.event_id.hex, "status_id": entity.status_id.hex,
            "files": [{"file_id": record.file_id.hex, "md5": record.md5} for record in entity.files]}


def bundle(dataset, *records, contents=None) -> bytes:
    """A file bundle of ``records``' bytes (or of ``contents``, by file id, where given)."""
    contents = {**dataset.contents, **(contents or {})}
    return b"".join(header_line(record.file_id, record.md5, len(contents[record.file_id]))
                    + contents[record.file_id] for record in records)
