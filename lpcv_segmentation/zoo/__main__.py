"""``python -m lpcv_segmentation.zoo list | fetch NAME | path NAME | install NAME --from FILE``.

  list                     the registry: each model's name, licence, input contract, what it was
                           trained on, the authors' published figures, and whether it is cached
  fetch NAME [--url URL]   download (from URL when given: a mirror; the hash is still checked),
                           verify the SHA-256, wrap with this project's metadata, cache
  path NAME                the cached file's path (exit 1 when it is not cached)
  install NAME --from FILE put a copied file into the cache (drones, air-gapped ground stations):
                           its hash is checked as a download's is

Then name the model ``zoo:NAME`` wherever a model path is taken, e.g.
``-p model_path:=zoo:lpcv2023-topformer-tiny``. Every failure is one line on stderr and exit 1.
"""
import argparse
import json
import sys
from typing import List, Optional

from lpcv_segmentation.zoo.cache import ZooError, cache_dir, resolve_model_path
from lpcv_segmentation.zoo.store import fetch, install, listing

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lpcv_segmentation.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    show = sub.add_parser("list", help="the registry and what is cached")
    show.add_argument("--json", action="store_true", help="print the entries as JSON")
    get = sub.add_parser("fetch", help="download, verify, wrap and cache a model")
    get.add_argument("name")
    get.add_argument("--url", default=None, help="download from here instead (a mirror or a "
                     "file:// path); the registry's SHA-256 is still checked")
    get.add_argument("--force", action="store_true", help="download again even when cached")
    where = sub.add_parser("path", help="print the cached model's path")
    where.add_argument("name")
    put = sub.add_parser("install", help="verify a copied file and put it in the cache")
    put.add_argument("name")
    put.add_argument("--from", dest="source", required=True, metavar="FILE",
                     help="the model file, as published (its SHA-256 must match the registry)")
    return parser


def _print_list(as_json: bool) -> None:
    entries = listing()
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    print("cache: %s" % cache_dir())
    for e in entries:
        print("\n%s  [%s]  %s" % (e["spec"], "cached" if e["cached"] else "not cached",
                                  e["licence"]))
        print("  input:      %dx%d RGB, mean %s std %s on the 0-%g range, logits at stride %s"
              % (e["input_size"], e["input_size"], list(e["mean"]), list(e["std"]),
                 e["norm_scale"], e["output_stride"] or "?"))
        print("  trained on: %s" % e["trained_on"])
        print("  source:     %s" % e["provenance"])
        print("  published:  %s" % e["published"])
        print("  url:        %s" % e["url"])
        print("  sha256:     %s" % e["sha256"])


class _ProgressBar:
    """A tqdm byte counter, opened at the first block so that a refusal stays one line."""

    def __init__(self) -> None:
        self.bar = None  # type: Optional[object]

    def __call__(self, done: int, total: Optional[int]) -> None:
        from tqdm import tqdm
        if self.bar is None:
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False)
        self.bar.update(done - self.bar.n)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # type: ignore[attr-defined]


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            _print_list(args.json)
        elif args.command == "path":
            print(resolve_model_path("zoo:" + args.name.replace("zoo:", "", 1)))
        elif args.command == "fetch":
            bar = _ProgressBar()
            try:
                report = fetch(args.name, url=args.url, force=args.force, progress=bar)
            finally:
                bar.close()
            print("%s %s" % ("fetched" if report["downloaded"] else "already cached:",
                             report["path"]))
        else:
            report = install(args.name, args.source)
            print("installed %s from %s" % (report["path"], report["source"]))
    except ZooError as error:
        print("zoo: error: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
