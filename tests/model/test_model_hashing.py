"""MD5 of file contents, one-shot or streamed, always as 32 lowercase hex digits."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meteorpi_model import MD5Stream, md5_bytes, md5_chunks, md5_file

EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def test_md5_of_known_inputs():
    assert md5_bytes(b"") == EMPTY_MD5
    assert md5_bytes(b"The quick brown fox jumps over the lazy dog") == "9e107d9d372bb6826bd81d3542a419d6"


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_chunked_digest_equals_one_shot_digest(chunks):
    stream = MD5Stream()
    for chunk in chunks:
        stream.update(chunk)
    whole = b"".join(chunks)
    assert stream.hexdigest() == md5_bytes(whole) == md5_chunks(chunks) == hashlib.md5(whole).hexdigest()
    assert stream.bytes_seen == len(whole)


def test_stream_accepts_bytearray_and_memoryview_and_counts_bytes_not_items():
    stream = MD5Stream()
    stream.update(bytearray(b"abc"))
    stream.update(memoryview(b"\x00\x01\x02\x03").cast("I"))
    assert stream.bytes_seen == 7
    assert stream.hexdigest() == md5_bytes(b"abc\x00\x01\x02\x03")


def test_digest_can_be_read_midway_and_the_stream_continues():
    stream = MD5Stream()
    stream.update(b"ab")
    assert stream.hexdigest() == md5_bytes(b"ab")
    stream.update(b"c")
    assert stream.hexdigest() == md5_bytes(b"abc")


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_md5_file_streams_a_file_in_chunks_of_any_size(tmp_path, chunk_size):
    data = bytes(range(256)) * 40 + b"tail"
    path = tmp_path / "meteor.bin"
    path.write_bytes(data)
    assert md5_file(path, chunk_size=chunk_size) == hashlib.md5(data).hexdigest()
    assert md5_file(str(path)) == md5_bytes(data)


def test_md5_file_of_an_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert md5_file(path) == EMPTY_MD5


def test_md5_file_refuses_a_chunk_size_that_is_not_positive(tmp_path):
    with pytest.raises(ValueError):
        md5_file(tmp_path / "unused", chunk_size=0)
