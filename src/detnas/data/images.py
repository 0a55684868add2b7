"""Image files: a cheap header check at construction and a decode that names the file when it fails."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from detnas.errors import UserError

# What PIL raises for unreadable, truncated or hostile files (broken PNG chunks raise SyntaxError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check_image(path: Path) -> tuple[int, int]:
    """Read only the header (no pixels) and return (width, height); fail early on files PIL cannot identify."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise UserError("image file not found", path) from None
    except _DECODE_ERRORS as e:
        raise UserError(f"unreadable image: {e}", path) from None


def load_rgb(path: Path) -> Image.Image:
    """Decode to RGB (grayscale, palette and alpha images converted), naming the file on failure."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError("image file not found", path) from None
    except _DECODE_ERRORS as e:
        raise UserError(f"cannot decode image: {e}", path) from None
