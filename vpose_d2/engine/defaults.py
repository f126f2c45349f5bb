"""Config loading with clear errors, and ``setup(args)`` for tools (cf. Detectron2's
``engine/defaults.py``)."""

import os
from argparse import Namespace
from typing import List, Sequence

import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_vpose_config

__all__ = ["ConfigKeyError", "merge_config_file", "merge_config_opts", "setup"]


class ConfigKeyError(KeyError):
    """A config key that does not exist, with the file or ``--opts`` it came from."""

    def __str__(self) -> str:  # KeyError's str() would quote the whole message
        return str(self.args[0])


def _yaml_chain(path: str) -> List[str]:
    """``path`` and the ``_BASE_`` files it inherits from, child first."""
    chain = [path]
    with open(path) as f:
        base = (yaml.safe_load(f) or {}).get("_BASE_")
    if base:
        if not os.path.isabs(base) and "://" not in base:
            base = os.path.join(os.path.dirname(path), base)
        chain += _yaml_chain(base)
    return chain


def _defines(path: str, dotted_key: str) -> bool:
    with open(path) as f:
        node = yaml.safe_load(f) or {}
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def merge_config_file(cfg: CfgNode, path: str) -> None:
    """``cfg.merge_from_file(path)``; an unknown key's error names the key and its file."""
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        msg = str(e.args[0]) if e.args else str(e)
        if "Non-existent config key" not in msg:
            raise
        key = msg.split(":", 1)[1].strip()
        try:
            sources = [p for p in _yaml_chain(path) if _defines(p, key)] or [path]
        except (OSError, yaml.YAMLError):  # e.g. a python tag: report the file given
            sources = [path]
        raise ConfigKeyError(
            f"Non-existent config key: {key} (set in config file '{sources[0]}'). Check its "
            "spelling, and that add_vpose_config(cfg) ran before merging."
        ) from e


def merge_config_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)``; an unknown key's error says it came from ``--opts``."""
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        # yacs reports an unknown key here with an AssertionError("Non-existent key: X").
        msg = str(e.args[0]) if e.args else str(e)
        if not msg.startswith("Non-existent"):
            raise
        key = msg.split(":", 1)[1].strip()
        raise ConfigKeyError(
            f"Non-existent config key: {key} (given on the command line in --opts)."
        ) from e


def setup(args: Namespace) -> CfgNode:
    """Config from ``args.config_file`` + ``args.opts``, frozen, with Detectron2's setup."""
    cfg = get_cfg()
    add_vpose_config(cfg)
    if args.config_file:
        merge_config_file(cfg, args.config_file)
    merge_config_opts(cfg, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup gives handlers to the "detectron2" and "fvcore" loggers only; without one,
    # vpose_d2's INFO lines (e.g. the PoseTrack results table) would be dropped.
    setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vpose_d2", abbrev_name="vpose"
    )
    return cfg
