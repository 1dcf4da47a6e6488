"""``zoomq keys add``: make a named API key and write its hash to the keys file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from zoomq.config import settings
from zoomq.errors import InvalidParameter
from zoomq.web import api_keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="API keys for the web API")
    what = p.add_subparsers(dest="what", required=True)
    add = what.add_parser("add", help="make a key, write its hash to the keys file, print the key once",
                          description="The key is shown once and never stored: only its SHA-256 goes to the file.")
    add.add_argument("name", help="who the key is for; their jobs are recorded under this name")
    add.add_argument("--admin", action="store_true", help="an admin key sees and cancels every job")
    add.add_argument("--file", type=Path, help="the keys file (default: ZOOMQ_API_KEYS_FILE)")
    add.set_defaults(run=run_add, light=True)


def run_add(args: argparse.Namespace) -> int:
    path = args.file or (Path(settings().api_keys_file) if settings().api_keys_file else None)
    if path is None:
        raise InvalidParameter("file", None, "required: give --file, or set ZOOMQ_API_KEYS_FILE")
    api_keys.check_name(args.name)
    existing = path.read_text() if path.exists() else ""
    if args.name in {keyring.name for keyring in api_keys.parse(existing, str(path)).values()}:
        raise InvalidParameter("name", args.name, f"is already in {path}; choose another name")
    key = api_keys.new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    separator = "" if not existing or existing.endswith("\n") else "\n"
    # Owner-only permissions: hashes do not reveal keys, but the list of names is the operator's.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(separator + api_keys.line(args.name, key, args.admin) + "\n")
    print(f"key for {args.name}{' (admin)' if args.admin else ''}, shown only now: {key}")
    return 0
