from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run directory or checkpoint to ONNX (checked with onnxruntime)")
    p.add_argument("src", help="a run directory of `deit train`, or any checkpoint `deit convert` reads")
    p.add_argument("dst", help="the .onnx file to write")
    p.add_argument("--weights", default="model", choices=["model", "best", "ema"], help="which weights of a run")
    p.add_argument("--model", default=None,
                   help="registered model name, for a checkpoint that carries no architecture (see `deit models`)")
    p.add_argument("--raw-pixels", action="store_true",
                   help="the graph takes uint8 images (0-255) and normalises them as training did")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.export import export_onnx

    result = export_onnx(args.src, args.dst, weights=args.weights, model=args.model, raw_pixels=args.raw_pixels,
                         opset=args.opset, check=not args.no_check)
    size_mb = result.path.stat().st_size / 2**20
    shape = ", ".join(str(d) for d in result.input_shape)
    checked = ("not checked" if result.max_abs_diff is None
               else f"onnxruntime matches PyTorch to {result.max_abs_diff:.1e}")
    print(f"wrote {result.path} ({size_mb:.1f} MiB): {result.input_name} {result.input_dtype} ({shape}) -> "
          f"{', '.join(result.output_names)}; {checked}")
    return 0
