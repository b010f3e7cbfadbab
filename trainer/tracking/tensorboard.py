"""A dependency-free TensorBoard scalar writer: Event protos encoded by hand, TFRecord-framed.

An event file is a sequence of TFRecords: ``uint64 length, uint32 masked_crc32c(length bytes),
data, uint32 masked_crc32c(data)`` (little endian), each data being a serialized ``Event``:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

The first event of a file carries ``file_version: "brain.Event:2"``; each scalar then gets one
Event with one Value. TensorBoard reads every ``events.out.tfevents.*`` file of a directory, so
each process (and each reopening) writing a run has a file of its own.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainer.tracking.appending import append_bytes

FILE_VERSION = "brain.Event:2"
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_FLOAT32_MAX = 3.4028234663852886e38


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC-32C (Castagnoli) of `data`, continuing from `crc`."""
    crc ^= _U32
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The CRC TFRecord stores: crc32c rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def tfrecord(data: bytes) -> bytes:
    """`data` framed as one TFRecord."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64s are encoded as their 64-bit two's complement
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step) + body


def file_version_event(wall_time: float) -> bytes:
    """The serialized Event that opens an event file."""
    return _event(wall_time, 0, _length_delimited(3, FILE_VERSION.encode()))


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """The serialized Event of one scalar (stored as float32, as TensorBoard does)."""
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        value = math.copysign(math.inf, value)  # beyond float32: TensorBoard shows infinity
    summary_value = _length_delimited(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)
    summary = _length_delimited(1, summary_value)
    return _event(wall_time, step, _length_delimited(5, summary))


_file_numbers = itertools.count()


def event_file_name(wall_time: float | None = None) -> str:
    """A new event file name: events.out.tfevents.<time>.<host>.<pid>.<n>."""
    stamp = int(wall_time if wall_time is not None else time.time())
    host = socket.gethostname() or "localhost"
    # Zero-padded: TensorBoard reads a directory's files in name order, and a run's 10th file
    # named "...10" would sort before its 9th, "...9" (and a pid of 999 after one of 1000).
    return f"events.out.tfevents.{stamp:010d}.{host}.{os.getpid():07d}.{next(_file_numbers):06d}"


class EventFileWriter:
    """Appends scalar events to one new event file in `directory` (created on the first write).

    Every `add_scalars` is one write() on the file, so TensorBoard sees whole records; a write
    that fails is cut off again, leaving no torn record.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / event_file_name()
        self._started = False

    def add_scalars(self, values: Mapping[str, float], step: int, wall_time: float) -> None:
        """Write one scalar event per value, all at `step` and `wall_time`."""
        self.add_many([(values, step, wall_time)])

    def add_many(self, rows: Sequence[tuple[Mapping[str, float], int, float]]) -> None:
        """Write the scalar events of several (values, step, wall_time) rows in one write()."""
        data = b"".join(
            tfrecord(scalar_event(tag, float(value), step, wall_time))
            for values, step, wall_time in rows
            for tag, value in values.items()
        )
        if not data:
            return
        if not self._started:
            data = tfrecord(file_version_event(rows[0][2])) + data
        append_bytes(self.path, data)
        self._started = True
