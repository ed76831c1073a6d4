from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (ours, official DeiT .pth, timm, Hugging Face) to our run layout, or to a "
             "directory transformers or timm load and serve",
    )
    p.add_argument("src", help="checkpoint file or directory")
    p.add_argument("dst", help="new directory to write")
    p.add_argument("--layout", choices=("deit", "hf", "timm"), default="deit",
                   help="deit: model.safetensors + config.json (default); hf: a Hugging Face transformers directory "
                        "(pipeline('image-classification', model=DIR)); timm: timm's hub layout "
                        "(timm.create_model('local-dir:DIR', pretrained=True)); both with a run's class names and "
                        "evaluation transform")
    p.add_argument("--model", default=None,
                   help="registered model name, for a checkpoint that carries no architecture (see `deit models`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.checkpoint import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, layout=args.layout, model=args.model)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out} ({args.layout} layout): {files}")
    return 0
