"""Does our detection + alignment reproduce the kit? Full figures over every kit photo.

For each photo with ``detected`` True: dlib detection + 68-point landmarks -> 5 ArcFace points ->
similarity alignment -> the kit's MobileFaceNet, compared with the kit's ``new`` vector (cosine);
landmark error vs the kit's ``landmarks5``; and the crop made from the kit's own landmarks vs the
kit's stored aligned crop: mean absolute grey-level difference, and MobileFaceNet cosine with the
kit's ``new`` vector, as is and after the JPEG q95 round trip the kit's crops went through
(issue 9's parity target: median >= 0.9999). Optionally (``--old``) dlib's descriptor vs the
kit's ``old`` vector (slow: ~70 ms per photo).

    .venv/bin/python bench/alignment_check.py [--limit N] [--old] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np


def jpeg_round_trip(image: np.ndarray, *, quality: int = 95) -> np.ndarray:
    """Encode + decode as the kit stored its ``aligned/`` crops (Pillow JPEG, quality 95)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _print_report(
    *,
    checked: int,
    seconds: float,
    missed: list,
    cos_new: list[float],
    lm_err: list,
    crop_err: list,
    cos_kit_lm: list[float],
    cos_kit_lm_jpeg: list[float],
    cos_old: list[float],
) -> None:
    """The table of the checks."""
    cos = np.array(cos_new)
    print(f"kit photos with detected=True checked: {checked} ({seconds:.0f} s)")
    print("| check | value |\n|---|---|")
    print(f"| photos where our detector found no face | {len(missed)} |")
    print(f"| new-vector cosine >= 0.99 | {100 * np.mean(cos >= 0.99):.2f}% of {len(cos)} |")
    print(f"| new-vector cosine >= 0.999 | {100 * np.mean(cos >= 0.999):.2f}% |")
    print(f"| new-vector cosine min / median | {cos.min():.4f} / {np.median(cos):.5f} |")
    same = 100 * np.mean(np.array(lm_err) < 0.01)
    print(f"| landmarks identical (max error < 0.01 px) | {same:.2f}% |")
    print(
        f"| crop from kit landmarks vs kit crop, mean abs diff (grey levels) | "
        f"{np.mean(crop_err):.2f} (max {np.max(crop_err):.2f}) |"
    )
    raw, jpeg = np.array(cos_kit_lm), np.array(cos_kit_lm_jpeg)
    print(
        f"| crop from kit landmarks, cosine with kit `new`: median / min | "
        f"{np.median(raw):.5f} / {raw.min():.5f} |"
    )
    print(
        f"| same after the kit's JPEG q95 round trip: median / min | "
        f"{np.median(jpeg):.5f} / {jpeg.min():.5f} |"
    )
    if cos_old:
        old = np.array(cos_old)
        print(
            f"| old-vector (dlib) cosine >= 0.9999 | {100 * np.mean(old >= 0.9999):.2f}% "
            f"(min {old.min():.5f}) |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N detected photos")
    parser.add_argument("--old", action="store_true", help="also check dlib's descriptor")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)

    from service.inference.align import align_face
    from service.inference.backbone import OnnxBackbone
    from service.inference.detect import make_detector
    from service.inference.faces import face_crops
    from service.inference.images import read_image_file
    from service.kit import find_kit_dir, kit_backbone_manifest

    kit = find_kit_dir()
    if kit is None:
        print("sample kit absent (set FACEBRIDGE_KIT_DIR): nothing to check", file=sys.stderr)
        return 1
    with np.load(kit / "lfw" / "pairs.npz") as z:
        rows = {k: z[k] for k in ("path", "old", "new", "landmarks5", "detected")}
    detector = make_detector("dlib")
    backbone = OnnxBackbone(kit_backbone_manifest(kit), intra_op_threads=args.threads)
    descriptor = None
    if args.old:
        from service.inference.dlib_backbone import DlibDescriptor

        descriptor = DlibDescriptor(detector=detector)  # type: ignore[arg-type]
    chosen = np.flatnonzero(rows["detected"])[: args.limit]
    started = time.perf_counter()
    cos_new, cos_old, lm_err, crop_err, missed = [], [], [], [], []
    cos_kit_lm, cos_kit_lm_jpeg = [], []
    for done, i in enumerate(chosen):
        photo = read_image_file(kit / "lfw" / "photos" / rows["path"][i])
        kit_crop = read_image_file(kit / "lfw" / "aligned" / rows["path"][i]).astype(np.int16)
        from_kit = align_face(photo, rows["landmarks5"][i])
        crop_err.append(np.abs(from_kit - kit_crop).mean())
        pair = backbone.embed(np.stack([from_kit, jpeg_round_trip(from_kit)])) @ rows["new"][i]
        cos_kit_lm.append(float(pair[0]))
        cos_kit_lm_jpeg.append(float(pair[1]))
        try:
            (found,) = face_crops(photo, detector=detector)
        except Exception:
            missed.append(rows["path"][i])
            continue
        assert found.face is not None
        lm_err.append(np.abs(found.face.landmarks5 - rows["landmarks5"][i]).max())
        cos_new.append(float(backbone.embed(found.crop[None])[0] @ rows["new"][i]))
        if descriptor is not None:
            v, o = descriptor.embed_photo(photo, found.face), rows["old"][i]
            cos_old.append(float(v @ o / np.linalg.norm(v) / np.linalg.norm(o)))
        if (done + 1) % 1000 == 0:
            print(f"  {done + 1}/{len(chosen)} photos", file=sys.stderr)
    seconds = time.perf_counter() - started
    _print_report(
        checked=len(chosen),
        seconds=seconds,
        missed=missed,
        cos_new=cos_new,
        lm_err=lm_err,
        crop_err=crop_err,
        cos_kit_lm=cos_kit_lm,
        cos_kit_lm_jpeg=cos_kit_lm_jpeg,
        cos_old=cos_old,
    )
    cos, jpeg = np.array(cos_new), np.array(cos_kit_lm_jpeg)
    return 0 if np.mean(cos >= 0.99) >= 0.99 and np.median(jpeg) >= 0.9999 else 1


if __name__ == "__main__":
    sys.exit(main())
