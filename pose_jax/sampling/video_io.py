"""Reading input images and writing sampled videos (PIL and PyAV).

read_image(path)                 uint8 [H, W, 3] (EXIF orientation applied, as diffusers'
                                 ``load_image``); FileNotFoundError / ValueError name the path
to_uint8(video)                  float in [0, 1] (the pipeline's ``output_type="np"``) -> uint8
write_mp4(path, video, fps=16)   H.264 (libx264) if this PyAV build has it, else MPEG-4 Part 2;
                                 returns the codec used. Odd H/W are padded by edge replication
                                 to even (yuv420p needs even sizes); other sizes as given.
write_png(path, image)           uint8 [H, W, 3] as PNG
write_strip_png(path, video)     up to ``max_frames`` evenly spaced frames side by side

Paths may be local or ``gs://`` (etils ``epath``): files are read whole and encoded in memory,
then written in one piece, so PyAV and PIL never see a URL.
"""

from __future__ import annotations

import io

import numpy as np
from etils import epath

CODECS = ("libx264", "mpeg4")  # preference order


def read_image(path: str) -> np.ndarray:
  """The RGB image at ``path`` as uint8 ``[H, W, 3]``.

  Raises FileNotFoundError for a missing path and ValueError for a directory, an unreadable
  or truncated file, or a file that is not an image.
  """
  from PIL import Image, ImageOps, UnidentifiedImageError

  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{path}: no such file")
  if not p.is_file():
    raise ValueError(f"{path}: not a file")
  try:
    with Image.open(io.BytesIO(p.read_bytes())) as im:
      im = ImageOps.exif_transpose(im)
      rgb = np.asarray(im.convert("RGB"))
  except UnidentifiedImageError as e:
    raise ValueError(f"{path}: not an image file PIL can read") from e
  except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data, permissions
    raise ValueError(f"{path}: cannot read the image ({e})") from e
  if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
    raise ValueError(f"{path}: empty image {rgb.shape}")
  return np.ascontiguousarray(rgb, dtype=np.uint8)


def to_uint8(video: np.ndarray) -> np.ndarray:
  """uint8 passes through; floats are taken as [0, 1] and rounded to 0..255."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video
  return (np.clip(video.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def available_codec() -> str:
  """The first of :data:`CODECS` this PyAV build can encode with."""
  import av

  for name in CODECS:
    try:
      av.codec.Codec(name, "w")
      return name
    except Exception:  # PyAV raises UnknownCodecError / ValueError by version
      continue
  raise RuntimeError(f"PyAV has none of the video encoders {CODECS}")


def _check_video(video: np.ndarray) -> np.ndarray:
  video = to_uint8(video)
  if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape[:3]) < 1:
    raise ValueError(f"expected a video [F, H, W, 3], got {video.shape}")
  return video


def pad_even(video: np.ndarray) -> np.ndarray:
  """Pads H and W (edge replication, bottom/right) to even sizes."""
  _, h, w, _ = video.shape
  if h % 2 == 0 and w % 2 == 0:
    return video
  return np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(path: str, video: np.ndarray, fps: int = 16, codec: str | None = None) -> str:
  """Writes ``video`` (uint8, or float in [0, 1]; ``[F, H, W, 3]``) to ``path``; returns the
  codec used (``codec`` forces one)."""
  import av

  video = pad_even(_check_video(video))
  codec = codec or available_codec()
  buf = io.BytesIO()
  with av.open(buf, mode="w", format="mp4") as container:
    stream = container.add_stream(codec, rate=int(fps))
    stream.width, stream.height = video.shape[2], video.shape[1]
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": "17", "preset": "medium"}
    else:
      stream.bit_rate = 8_000_000
    for frame in video:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  _write_bytes(path, buf.getvalue())
  return codec


def _write_bytes(path, data: bytes) -> None:
  """``data`` to ``path`` (local or ``gs://``), its parent folders made first."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_bytes(data)


def write_png(path, image: np.ndarray) -> None:
  """uint8 ``[H, W, 3]`` to a PNG file at ``path`` (local or ``gs://``)."""
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  _write_bytes(path, buf.getvalue())


def read_mp4(path: str) -> np.ndarray:
  """All frames of a video file as uint8 ``[F, H, W, 3]`` (for checks)."""
  import av

  with av.open(io.BytesIO(epath.Path(path).read_bytes())) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def strip(video: np.ndarray, max_frames: int = 8) -> np.ndarray:
  """Up to ``max_frames`` evenly spaced frames (first and last included) side by side."""
  video = _check_video(video)
  n = video.shape[0]
  idx = np.unique(np.linspace(0, n - 1, min(n, max(1, max_frames))).round().astype(int))
  return np.concatenate(list(video[idx]), axis=1)


def write_strip_png(path: str, video: np.ndarray, max_frames: int = 8) -> None:
  write_png(path, strip(video, max_frames))


__all__ = [
  "available_codec",
  "pad_even",
  "read_image",
  "read_mp4",
  "strip",
  "to_uint8",
  "write_mp4",
  "write_png",
  "write_strip_png",
]
