from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "shards",
        help="pack an image folder into WebDataset tar shards (train/ and val/), streamed with --data wds:OUT",
    )
    p.add_argument("source", help="imagefolder:PATH (PATH/train/<class>/..., PATH/val/<class>/...)")
    p.add_argument("out", help="new (or empty) directory for the shards, their index and meta.json")
    p.add_argument("--shard-size", default="1GB", help="most bytes per shard: 1GB (default), 500MB, 256MiB, ...")
    p.add_argument("--seed", type=int, default=0, help="seed of the packing order (images of a class are spread "
                                                       "over the shards); the same folder and seed give the same "
                                                       "shards, byte for byte")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out files that fail the listing check (recorded in meta.json) instead of stopping")
    p.set_defaults(func=run)


def run(args) -> int:
    from deit.data.shard_writer import write_shards

    meta = write_shards(args.source, args.out, args.shard_size, args.seed, args.skip_bad_images,
                        on_shard=lambda path, samples: print(f"{path}: {samples} images", flush=True))
    for split, info in meta["splits"].items():
        skipped = len(meta["skipped"][split])
        print(f"{split}: {info['samples']} images in {len(info['shards'])} shards"
              + (f" ({skipped} bad files left out)" if skipped else ""))
    print(f"wrote {args.out} ({len(meta['classes'])} classes): train with --data wds:{args.out}")
    return 0
