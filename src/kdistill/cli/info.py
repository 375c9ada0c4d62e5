"""``kdistill models`` and ``kdistill config``: what can be configured, and how."""

from __future__ import annotations

import argparse

from kdistill.cli.commands import split_config_and_overrides


def register_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model registry and each model's arguments")
    p.set_defaults(handler=handle_models)


def handle_models(args: argparse.Namespace) -> int:
    from kdistill.models import MODELS, builder_args

    for name, builder in MODELS.items():
        options = ", ".join(f"{k}={v!r}" for k, v in builder_args(builder).items())
        print(f"{name:24s} {options or '(no arguments)'}")
    print("\nOr any builder by import path: model.arch='package.module:function'.")
    from kdistill.models.gpt import GPT_SIZES

    print("\nLanguage models (data.name: pydocs or text; the vocabulary is the tokenizer's):")
    for name, size in GPT_SIZES.items():
        options = ", ".join(f"{k}={v!r}" for k, v in size.items())
        print(
            f"{name:24s} {options}, hidden=None, rope_base=10000.0, norm_eps=1e-05, tie_embeddings=True"
        )
    return 0


def register_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show a resolved config, list shipped recipes, or print the reference of every key",
    )
    p.add_argument("action", choices=("show", "list", "docs"))
    p.add_argument(
        "items", nargs="*", metavar="CONFIG|KEY=VALUE", help="for show: config and overrides"
    )
    p.set_defaults(handler=handle_config)


def handle_config(args: argparse.Namespace) -> int:
    from kdistill.config import dump_yaml, list_recipes, load_config

    if args.action == "list":
        for name in list_recipes():
            print(name)
        return 0
    if args.action == "docs":
        from kdistill.config.docs import render_markdown

        print(render_markdown(), end="")
        return 0
    config, overrides = split_config_and_overrides(args.items)
    print(dump_yaml(load_config(config, overrides)), end="")
    return 0
