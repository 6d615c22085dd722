"""Real files for the attachment tests and the bench (no tests here): PNG, JPEG, GIF, WebP, PDF and WAV bytes."""

from __future__ import annotations

import io
import struct
import wave
import zlib


def png(width: int = 64, height: int = 48, marker: bytes = b"", noise: int = 0) -> bytes:
    """A valid RGB PNG. `marker` goes in a tEXt chunk (findable on disk); `noise` bytes of random-ish
    pixels make the file about that large (incompressible)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = 1 + width * 3
    if noise:
        seed, raw = 12345, bytearray()
        while len(raw) < height * row:
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            raw += seed.to_bytes(4, "little")
        pixels = bytearray(raw[: height * row])
        for y in range(height):
            pixels[y * row] = 0  # each scanline's filter byte
    else:
        pixels = bytearray(height * row)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = chunk(b"tEXt", b"Comment\x00" + marker) if marker else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + text
        + chunk(b"IDAT", zlib.compress(bytes(pixels)))
        + chunk(b"IEND", b"")
    )


def noisy_png(size: int) -> bytes:
    """A PNG of about `size` bytes (a square of incompressible pixels)."""
    side = int((size / 3) ** 0.5) + 1
    return png(side, side, noise=size)


def jpeg(width: int = 8, height: int = 8) -> bytes:
    """A valid baseline greyscale JPEG: every block mid-grey (all coefficients zero), one-code Huffman tables."""
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    bits = "00" * blocks  # per block: DC difference 0, then end-of-block
    bits += "1" * (-len(bits) % 8)
    scan = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    one_code = bytes([1] + [0] * 15) + b"\x00"
    return (
        b"\xff\xd8"
        + b"\xff\xdb\x00\x43\x00"
        + bytes([1] * 64)
        + b"\xff\xc0\x00\x0b\x08"
        + struct.pack(">HH", height, width)
        + b"\x01\x01\x11\x00"
        + b"\xff\xc4\x00\x14\x00"
        + one_code
        + b"\xff\xc4\x00\x14\x10"
        + one_code
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        + scan
        + b"\xff\xd9"
    )


def gif(width: int = 3, height: int = 2) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c\x00\x00\x00\x00"
        + struct.pack("<HH", width, height)
        + b"\x00\x02\x02\x44\x01\x00\x3b"
    )


def webp_lossless_header(width: int, height: int) -> bytes:
    """The header of a lossless WebP (enough for the size to be read)."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 8
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pdf(lines: list[str]) -> bytes:
    """A one-page PDF with these lines of text (Helvetica), with a correct cross-reference table."""
    text = " ".join(f"({line}) Tj 0 -20 Td" for line in lines)
    stream = f"BT /F1 14 Tf 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def wav(seconds: float = 0.2, rate: int = 8000) -> bytes:
    """A real WAV file of silence."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()
