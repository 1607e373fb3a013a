"""Loading: TOML text or a parsed dict into a validated `Config`, msgspec errors rewritten into
messages that name the field the way an operator reads the file."""
from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Union

import msgspec

from hepfast.config.errors import ConfigError
from hepfast.config.schema import Config, Destination
from hepfast.config.validate import _qkey, validate

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib  # type: ignore[no-redef]



# The bundled configuration `hepfast run` uses without -c (shipped as package data).
DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.toml")


def load_default() -> Config:
    return load_config(DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike, *, implemented: bool = False) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{os.fspath(path)!r} is not UTF-8 text: {exc}") from None
    return parse_config(text, source=os.fspath(path), implemented=implemented)


def parse_config(text: str, source: str = "<string>", *, implemented: bool = False) -> Config:
    """implemented=True (check, run, reload): transports this version does not implement yet are
    refused first, before any other check."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{source}: not valid TOML: {exc}") from None
    return from_dict(raw, implemented=implemented)


def from_dict(raw: dict, *, implemented: bool = False) -> Config:
    """Validate an already-parsed configuration (the dict tomllib returns)."""
    if not isinstance(raw, dict):
        raise ConfigError("", f"expected a table of settings, got {type(raw).__name__}")
    if implemented:
        # Transports first, before the type checks: an operator is told at once, not after
        # fixing an unrelated key. Only string values; the rest is msgspec's to judge.
        from types import SimpleNamespace as NS

        from hepfast.config.validate import _check_implemented

        def tr(x) -> NS:
            t = x.get("transport", "udp") if isinstance(x, dict) else "udp"
            return NS(transport=t if isinstance(t, str) else "udp")
        lsts, dsts = raw.get("listeners"), raw.get("destinations")
        _check_implemented(NS(listeners=[tr(x) for x in lsts] if isinstance(lsts, list) else [],
                              destinations={k: tr(v) for k, v in dsts.items()}
                              if isinstance(dsts, dict) else {}))
    # Destinations are converted one by one: msgspec writes dict keys as `[...]` in its paths,
    # and the operator needs the destination's name.
    dests = raw.get("destinations")
    if isinstance(dests, dict):
        for name, body in dests.items():
            _convert(body, Destination, f"destinations.{_qkey(name)}")
    cfg = _convert(raw, Config, "")
    if implemented:
        # The operational path (check, run, reload) applies HEPFAST_ADMIN_TOKEN and
        # "$HEPFAST_NODE_NAME" (hepfast.config.env) before validating the result.
        from hepfast.config.env import apply_env_overrides

        cfg = apply_env_overrides(cfg)
    validate(cfg, implemented=implemented)
    return cfg


def _convert(obj: Any, typ: type, prefix: str) -> Any:
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as exc:
        msg, sep, where = str(exc).rpartition(" - at `")
        if not sep:
            msg, where = str(exc), "$`"
        path = where.rstrip("`")
        path = path[1:] if path.startswith("$") else path
        path = prefix + path if prefix else path.lstrip(".")
        raise _friendly(path, msg, typ, path[len(prefix):].lstrip(".")) from None


def _friendly(path: str, msg: str, root: type, rel: str) -> ConfigError:
    """Rewrite msgspec's message into one that says what is accepted."""
    m = re.match(r"Object contains unknown field `(.*)`$", msg)
    if m:
        key = m.group(1)
        typ = _type_at(root, rel)
        full = f"{path}.{_qkey(key)}" if path else _qkey(key)
        if typ is not None and hasattr(typ, "__struct_fields__"):
            valid = [msgspec.structs.fields(typ)[i].encode_name
                     for i in range(len(typ.__struct_fields__))]
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean \"{close[0]}\"?" if close else ""
            return ConfigError(full, f"unknown key \"{key}\"{hint} (valid keys: "
                                     f"{', '.join(valid)})")
        return ConfigError(full, f"unknown key \"{key}\"")
    m = re.match(r"Invalid enum value (.*)$", msg)
    if m:
        typ = _type_at(root, rel, leaf=True)
        args = typing.get_args(typ) if typing.get_origin(typ) is Literal else ()
        if args:
            return ConfigError(path, f"{m.group(1)} is not one of "
                                     f"{', '.join(repr(a) for a in args)}")
    m = re.match(r"Object missing required field `(.*)`$", msg)
    if m:
        return ConfigError(path, f"missing required key \"{m.group(1)}\"")
    return ConfigError(path, msg)


def _type_at(root: type, rel: str, leaf: bool = False) -> Any:
    """The declared type at a msgspec path relative to `root` (best effort, None if lost)."""
    typ: Any = root
    for part in re.findall(r"\[[^\]]*\]|[^.\[\]]+", rel):
        typ = _strip_optional(typ)
        if part.startswith("["):
            args = typing.get_args(typ)
            origin = typing.get_origin(typ)
            if origin is list and args:
                typ = args[0]
            elif origin is dict and len(args) == 2:
                typ = args[1]
            else:
                return None
        elif hasattr(typ, "__struct_fields__"):
            hints = typing.get_type_hints(typ, include_extras=False)
            fields = {f.encode_name: f.name for f in msgspec.structs.fields(typ)}
            if part not in fields:
                return None
            typ = hints[fields[part]]
        elif typing.get_origin(typ) is dict:
            typ = typing.get_args(typ)[1]
        else:
            return None
    return typ if leaf else _strip_optional(typ)


def _strip_optional(t: Any) -> Any:
    args = typing.get_args(t)
    if typing.get_origin(t) is Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
        structs = [a for a in rest if hasattr(a, "__struct_fields__")]
        if len(structs) == 1:
            return structs[0]
    return t
