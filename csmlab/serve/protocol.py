"""Moshi's websocket protocol, as moshi 0.2.13's `server.py` and `client.py` speak it.

    client -> server   0x01 + Ogg/Opus pages (24 kHz mono)
    server -> client   0x00 handshake once the session is ready, 0x01 + Ogg/Opus pages,
                       0x02 + UTF-8 text, 0x05 + UTF-8 error message (csmlab and moshi's web UI)

The first byte of each binary message is its kind. Moshi's clients (sphn's `OpusStreamWriter`,
the web UI's recorder) send whole Ogg pages per message, so csmlab checks that each audio message is
whole pages before the decoder sees it: a truncated or foreign payload then gets a clear error and
the stream stays decodable, where sphn's reader would raise on the *next* good page instead. Each
page's CRC is checked too (sphn's reader does not), so a corrupted page is refused, not decoded.
"""
from __future__ import annotations

import struct
import zlib

from csmlab.errors import CsmlabError

HANDSHAKE, AUDIO, TEXT, ERROR = 0x00, 0x01, 0x02, 0x05
KIND_NAMES = {HANDSHAKE: "handshake", AUDIO: "audio", TEXT: "text", ERROR: "error"}
_OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, segments
_CRC_AT = 22  # the CRC field's offset in a page header
_REVERSED_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


class ProtocolError(CsmlabError):
    """A client message that breaks the protocol; its text goes back to the client as an 0x05 message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # a short label for the errors metric: "empty", "unknown_kind", ...


def ogg_crc(page: bytes) -> int:
    """RFC 3533's page checksum: CRC-32 with polynomial 0x04C11DB7, not reflected, initial value 0,
    over the page with its CRC field read as zero. zlib's crc32 is the reflected variant: on the
    bit-reversed bytes, with its initial and final inversion undone, it gives the bit-reversed
    answer (C speed, where a Python loop took 20 ms for a 64 KB message)."""
    zeroed = page[:_CRC_AT] + bytes(4) + page[_CRC_AT + 4:]
    reflected = zlib.crc32(zeroed.translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def error_message(text: str) -> bytes:
    return bytes([ERROR]) + text.encode("utf-8")


def text_message(text: str) -> bytes:
    return bytes([TEXT]) + text.encode("utf-8")


def audio_message(ogg: bytes) -> bytes:
    return bytes([AUDIO]) + ogg


def check_ogg_pages(data: bytes) -> None:
    """Raise `ProtocolError` unless `data` is one or more whole Ogg pages (RFC 3533 framing)."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < _OGG_HEADER.size:
            raise ProtocolError("truncated_audio", f"audio ends inside an Ogg page header at byte {offset}: "
                                "send whole Ogg/Opus pages (sphn.OpusStreamWriter output) after the 0x01 byte")
        capture, version, _, _, _, _, crc, segments = _OGG_HEADER.unpack_from(data, offset)
        if capture != b"OggS" or version != 0:
            raise ProtocolError("not_ogg", f"audio at byte {offset} is not an Ogg page (no 'OggS'): "
                                "encode 24 kHz mono PCM with Ogg/Opus (sphn.OpusStreamWriter)")
        table = offset + _OGG_HEADER.size
        end = table + segments + sum(data[table:table + segments])  # past len(data) if the table is cut too
        if end > len(data):
            raise ProtocolError("truncated_audio", f"the Ogg page at byte {offset} is truncated "
                                f"({len(data) - offset} of {end - offset} bytes): send whole pages")
        if ogg_crc(data[offset:end]) != crc:
            raise ProtocolError("bad_crc", f"the Ogg page at byte {offset} fails its CRC check: it was corrupted "
                                "on the way; send the pages as the encoder wrote them")
        offset = end


def audio_payload(message) -> bytes:
    """The Ogg bytes of a client message, or `ProtocolError` saying what is wrong with it."""
    if isinstance(message, str):
        raise ProtocolError("text_frame", "text frames are not part of the protocol: send binary messages "
                            "whose first byte is 0x01 followed by Ogg/Opus audio")
    if not message:
        raise ProtocolError("empty", "empty message: send 0x01 followed by Ogg/Opus audio")
    kind = message[0]
    if kind != AUDIO:
        name = KIND_NAMES.get(kind, "unknown")
        raise ProtocolError("unknown_kind", f"message kind 0x{kind:02x} ({name}) is not accepted from a client: "
                            "send 0x01 followed by Ogg/Opus audio")
    if len(message) == 1:
        raise ProtocolError("empty", "audio message without audio: append Ogg/Opus pages after the 0x01 byte")
    check_ogg_pages(message[1:])
    return bytes(message[1:])
