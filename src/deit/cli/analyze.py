from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("analyze", help="attention maps, cls/dist token similarity, confusion matrix, curves of runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of `deit train` (ViT/DeiT models)")
    p.add_argument("--output", required=True, metavar="DIR", help="written to DIR/<run>/ and DIR/curves.png")
    p.add_argument("--images", type=int, default=8, help="val images in the attention grid")
    p.add_argument("--weights", default="model", choices=["model", "best", "ema"])
    p.add_argument("--data", default=None, help="data set (default: the run's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-val", type=int, default=None, metavar="N",
                   help="confusion matrix on the first N val images (default: all)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.analyze import analyze

    written = analyze(args.runs, args.output, num_images=args.images, weights=args.weights, data=args.data,
                      data_dir=args.data_dir, max_val=args.max_val, batch_size=args.batch_size, device=args.device)
    for label, files in written.items():
        for path in files.values():
            print(f"{label}: {path}")
    return 0
