"""`project` and `character`: add them and change their settings."""

from __future__ import annotations

import argparse

from lora_pipeline.cli.common import CliError, Subcommands, registry, settings
from lora_pipeline.cli.profiles import checkpoint_argument
from lora_pipeline.generation_settings import ANY_NUMBER, LIMITS, parse_number
from lora_pipeline.registry import commands
from lora_pipeline.registry.commands.projects import FLAG_SETTINGS
from lora_pipeline.registry.models import Character


def cmd_project_add(args: argparse.Namespace) -> None:
    with registry(settings()).session() as session:
        project = commands.add_project(
            session, args.slug, args.name or args.slug, args.description, args.style_prompt
        )
        print(f"project {project.slug} added")


# Project settings by kind (see commands.PROJECT_SETTINGS); the CLI parses the numbers so that a
# bad one is one `error:` line like every other bad value.
LIST_SETTINGS = ("eval_prompts", "eval_seeds")
TEXT_SETTINGS = commands.LICENCE_FIELDS
THRESHOLD_SETTINGS = tuple(
    key
    for key in commands.PROJECT_SETTINGS
    if key not in LIST_SETTINGS + TEXT_SETTINGS + FLAG_SETTINGS
)
# `--unset` also takes the singular option names.
SETTING_ALIASES = {"eval_prompt": "eval_prompts", "eval_seed": "eval_seeds"}


def _option(key: str) -> str:
    return "--" + SETTING_ALIASES.get(key, key).replace("_", "-")


def _setting_key(name: str) -> str:
    key = name.strip().replace("-", "_").removeprefix("__")
    key = SETTING_ALIASES.get(key, key)
    if key not in commands.PROJECT_SETTINGS:
        raise CliError(
            f"unknown project setting {name!r}: use {', '.join(commands.PROJECT_SETTINGS)}"
        )
    return key


def _project_settings_from(args: argparse.Namespace) -> dict[str, object]:
    values: dict[str, object] = {}
    if args.eval_prompts:
        values["eval_prompts"] = list(args.eval_prompts)
    if args.eval_seeds:
        seed = LIMITS["seed"]
        values["eval_seeds"] = [parse_number(t, "--eval-seed", seed) for t in args.eval_seeds]
    for key in THRESHOLD_SETTINGS:
        text = getattr(args, key)
        if text is not None:
            values[key] = parse_number(text, _option(key), ANY_NUMBER)
    for key in TEXT_SETTINGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    for key in FLAG_SETTINGS:
        if getattr(args, key):
            values[key] = True
    for key in map(_setting_key, args.unset):
        if key in values:
            raise CliError(f"{_option(key)} and --unset {key} contradict each other")
        values[key] = None
    if not values and args.checkpoint is None:
        raise CliError(
            "nothing to change: give a setting such as --checkpoint or --min-identity, "
            "or --unset KEY"
        )
    return values


def cmd_project_set(args: argparse.Namespace) -> None:
    values = _project_settings_from(args)
    checkpoint = None if args.checkpoint is None else checkpoint_argument(args.checkpoint)
    with registry(settings()).session() as session:
        if checkpoint is not None:
            # The short way to the checkpoint of the project's default generation profile.
            profile = commands.set_project_checkpoint(session, args.slug, checkpoint)
            print(
                f"project {args.slug}: checkpoint {checkpoint} (profile {profile.name}; used "
                "from the next run on)"
            )
            if not values:
                return
        project = commands.update_project_settings(session, args.slug, **values)
        changed = ", ".join(k for k, v in values.items() if v is not None)
        removed = ", ".join(k for k, v in values.items() if v is None)
        done = "; ".join(
            part for part in (changed and f"set {changed}", removed and f"unset {removed}") if part
        )
        print(f"project {project.slug}: {done}")
        _print_project_settings(project.settings or {})


def cmd_project_show(args: argparse.Namespace) -> None:
    with registry(settings()).session() as session:
        project = commands.get_project(session, args.slug)
        print(f"project {project.slug}: {project.name}")
        _print_project_settings(project.settings or {})


def _print_project_settings(values: dict[str, object]) -> None:
    """Every project setting, one a line; an unset one keeps the pipeline's default."""
    for key in commands.PROJECT_SETTINGS:
        value = values.get(key)
        if value is None:
            print(f"  {key:<16} (default)")
        elif key == "eval_prompts" and isinstance(value, list):
            print(f"  {key:<16} {len(value)} prompt(s)")
            for number, prompt in enumerate(value, 1):
                print(f"    {number}. {prompt}")
        elif isinstance(value, list):
            print(f"  {key:<16} {', '.join(map(str, value))}")
        else:
            print(f"  {key:<16} {value}")


# Generation settings `character add` takes; the numbers are parsed with their shared limits.
CHARACTER_NUMBERS = ("seed", "cfg", "steps", "width", "height")


def cmd_character_add(args: argparse.Namespace) -> None:
    values: dict[str, object] = {
        k: parse_number(getattr(args, k), f"--{k}", LIMITS[k])
        for k in CHARACTER_NUMBERS
        if getattr(args, k) is not None
    }
    if args.sampler is not None:
        values["sampler"] = args.sampler
    with registry(settings()).session() as session:
        character = commands.add_character(
            session,
            args.project,
            args.slug,
            args.name or args.slug,
            design_prompt=args.design_prompt,
            trigger_word=args.trigger_word,
            negative_prompt=args.negative_prompt,
            seed_locked=args.lock_seed,
            **values,
        )
        print(f"character {character.slug} added (trigger word {character.trigger_word})")


# What `character set` changes besides the numbers: option name → update_character keyword.
CHARACTER_TEXTS = (
    "name",
    "design_prompt",
    "negative_prompt",
    "trigger_word",
    "sampler",
    "scheduler",
)


def _character_changes(args: argparse.Namespace) -> dict[str, object]:
    values: dict[str, object] = {
        k: parse_number(getattr(args, k), f"--{k}", LIMITS[k])
        for k in CHARACTER_NUMBERS
        if getattr(args, k) is not None
    }
    values.update({k: getattr(args, k) for k in CHARACTER_TEXTS if getattr(args, k) is not None})
    if args.seed_locked is not None:
        values["seed_locked"] = args.seed_locked
    if not values:
        raise CliError("nothing to change: give a setting such as --design-prompt or --lock-seed")
    return values


def cmd_character_set(args: argparse.Namespace) -> None:
    values = _character_changes(args)
    with registry(settings()).session() as session:
        character = commands.update_character(session, args.slug, **values)
        print(f"character {character.slug}: set {', '.join(values)} (used from the next run on)")
        _print_character(character)


def cmd_character_show(args: argparse.Namespace) -> None:
    with registry(settings()).session() as session:
        _print_character(commands.get_character(session, args.slug))


def _print_character(character: Character) -> None:
    seed = "random per image" if not character.seed_locked else f"{character.seed} (locked)"
    if not character.seed_locked and character.seed is not None:
        seed = f"random per image (unlocked seed {character.seed})"
    rows = {
        "name": character.name,
        "project": character.project.slug,
        "trigger_word": character.trigger_word,
        "design_prompt": character.design_prompt or "—",
        "negative_prompt": character.negative_prompt or "—",
        "seed": seed,
        **{k: getattr(character, k) for k in commands.CHARACTER_SETTINGS if k != "seed"},
    }
    for key, value in rows.items():
        print(f"  {key:<16} {'(default)' if value is None else value}")


def register(sub: Subcommands) -> None:
    project = sub.add_parser("project", help="projects").add_subparsers(
        dest="action", required=True
    )
    padd = project.add_parser("add", help="add a project")
    padd.add_argument("slug")
    padd.add_argument("--name")
    padd.add_argument("--description", default="")
    padd.add_argument("--style-prompt", default="")
    padd.set_defaults(func=cmd_project_add)

    pset = project.add_parser(
        "set",
        help="checkpoint, evaluation prompts and seeds, gate thresholds, model-card licence fields",
    )
    pset.add_argument("slug")
    pset.add_argument(
        "--checkpoint",
        metavar="PATH_OR_ID",
        help="the checkpoint of the project's default generation profile (made if none)",
    )
    pset.add_argument(
        "--eval-prompt",
        dest="eval_prompts",
        action="append",
        metavar="TEXT",
        help="an eval grid row (repeatable; replaces the list; the trigger word is added)",
    )
    pset.add_argument(
        "--eval-seed",
        dest="eval_seeds",
        action="append",
        metavar="N",
        help="an eval grid seed (repeatable; replaces the list)",
    )
    for key in THRESHOLD_SETTINGS:
        pset.add_argument(_option(key), dest=key, metavar="X", help="gate threshold")
    for key in TEXT_SETTINGS:
        pset.add_argument(_option(key), dest=key, metavar="TEXT", help="model card field")
    pset.add_argument(
        "--require-licence",
        dest="require_licence",
        action="store_true",
        help="no release of the project is approved without a licence (--unset require-licence)",
    )
    pset.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="KEY",
        help="back to the default (repeatable), e.g. --unset min-identity",
    )
    pset.set_defaults(func=cmd_project_set)
    pshow = project.add_parser("show", help="a project's settings")
    pshow.add_argument("slug")
    pshow.set_defaults(func=cmd_project_show)

    character = sub.add_parser("character", help="characters").add_subparsers(
        dest="action", required=True
    )
    cadd = character.add_parser("add", help="add a character to a project")
    cadd.add_argument("slug")
    cadd.add_argument("--project", required=True)
    cadd.add_argument("--name")
    cadd.add_argument("--design-prompt", default="")
    cadd.add_argument("--trigger-word")
    cadd.add_argument("--negative-prompt", default="")
    for name in CHARACTER_NUMBERS:
        cadd.add_argument(f"--{name}", metavar="N")
    cadd.add_argument("--sampler")
    cadd.add_argument(
        "--lock-seed",
        action="store_true",
        help="every image uses --seed (counting up within a request); "
        "by default each image draws a fresh random seed",
    )
    cadd.set_defaults(func=cmd_character_add)

    cset = character.add_parser(
        "set", help="change a character's texts, trigger word, generation settings, seed lock"
    )
    cset.add_argument("slug")
    for name in CHARACTER_TEXTS:
        cset.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="TEXT")
    for name in CHARACTER_NUMBERS:
        cset.add_argument(f"--{name}", metavar="N")
    lock = cset.add_mutually_exclusive_group()
    lock.add_argument(
        "--lock-seed",
        dest="seed_locked",
        action="store_const",
        const=True,
        default=None,
        help="every image uses the seed (counting up within a request)",
    )
    lock.add_argument(
        "--unlock-seed",
        dest="seed_locked",
        action="store_const",
        const=False,
        help="each image draws a fresh random seed (the default)",
    )
    cset.set_defaults(func=cmd_character_set)
    cshow = character.add_parser("show", help="a character's settings")
    cshow.add_argument("slug")
    cshow.set_defaults(func=cmd_character_show)
