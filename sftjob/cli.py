"""The `sftjob` command line.

Heavy imports (torch, transformers, kopf) happen inside the commands that
need them, so `validate` and `render` start in well under a second and the
operator image never loads torch. Bad input ends in one line per problem
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from sftjob.manifest import ManifestError
from sftjob.vocabulary import ExitCode


def _fail(lines: list[str] | str, code: int = ExitCode.INVALID_CONFIG) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {line}", file=sys.stderr)
    return int(code)


def cmd_validate(args: argparse.Namespace) -> int:
    """Schema + cross-field checks of every SFTJob in every file."""
    from sftjob.manifest import load_sftjobs

    problems: list[str] = []
    count = 0
    for path in args.files:
        try:
            jobs = load_sftjobs(path)
        except ManifestError as e:
            problems.extend(e.errors)
            continue
        count += len(jobs)
        print(f"{path}: {', '.join(j.name for j in jobs)} valid")
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{len(args.files)} file(s), {count} SFTJob(s): all valid")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Print the objects the operator would create for an SFTJob."""
    from sftjob.manifest import load_sftjob
    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.render import render

    try:
        job = load_sftjob(args.file)
        config = OperatorConfig.from_env()
        objects = render(job, config)  # RenderError (a ValueError): what the operator would report as InvalidSpec
    except (ManifestError, ValueError) as e:
        return _fail(getattr(e, "errors", None) or [str(e)], 1)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False), end="")
    return 0


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the run config JSON) as readable `|` blocks."""


def _str_block(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


def cmd_preview(args: argparse.Namespace) -> int:
    """Show the first N examples as the trainer sees them."""
    from sftjob_runtime.entrypoint import preview

    return preview(args.file, n=args.n, as_json=args.json)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole job: load, (sanity), train, keep the best checkpoint, export."""
    from sftjob_runtime.entrypoint import run

    return run(args.file, output_dir=args.output, report_json=args.report, skip_sanity=args.skip_sanity)


def cmd_sanity(args: argparse.Namespace) -> int:
    """Run only the sanity check."""
    from sftjob_runtime.entrypoint import sanity

    return sanity(args.file, as_json=args.json, output_dir=args.output)


def cmd_plan(args: argparse.Namespace) -> int:
    """Pre-flight plan: memory per GPU by strategy, whether it fits, steps, time and cost."""
    from sftjob_runtime.plan_job import plan_command

    return plan_command(args.file, as_json=args.json, gpu_memory=args.gpu_memory, tokens_per_second=args.tokens_per_second,
                        price_per_gpu_hour=args.price_per_gpu_hour, train_rows=args.train_rows)


def cmd_report(args: argparse.Namespace) -> int:
    """Render a run's report.html from its report.json (a run directory, an exported model or an output URI)."""
    from sftjob_runtime.entrypoint import report

    return report(args.location, args.out, endpoint=args.endpoint, region=args.region)


def cmd_demo_model(args: argparse.Namespace) -> int:
    """Prepare the offline demo model (SmolLM2-135M-Instruct)."""
    from sftjob_runtime.demo_model import DemoModelError, prepare_demo_model

    try:
        path = prepare_demo_model(Path(args.dir) if args.dir else None)
    except DemoModelError as e:
        return _fail(str(e), 1)
    print(path)
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the operator (what the Helm chart's Deployment runs)."""
    from sftjob_operator.main import run_operator

    return run_operator(args.operator_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftjob", description="Declarative supervised fine-tuning of LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check SFTJob manifests (exit 0 valid, 1 invalid)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the Kubernetes objects the operator would create")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("preview", help="show training examples as the trainer sees them, with the trained-on spans")
    p.add_argument("file", metavar="FILE", help="an SFTJob manifest or a run config JSON")
    p.add_argument("-n", type=int, default=3, help="number of examples (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("sanity", help="run the sanity check alone (exit 0 pass)")
    p.add_argument("file", metavar="FILE", help="an SFTJob manifest or a run config JSON")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--output", metavar="DIR", help="keep the findings here for the run report (the pod's work volume)")
    p.set_defaults(func=cmd_sanity)

    p = sub.add_parser("plan", help="memory per GPU by strategy, whether it fits, steps, time and cost "
                                     "(exit 0 fits, 1 does not)")
    p.add_argument("file", metavar="FILE", help="an SFTJob manifest or a run config JSON")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory of one GPU, e.g. 80Gi or 24GB (default: from a known GPU "
                   "in spec.resources.nodeSelector, else 80 GB)")
    p.add_argument("--tokens-per-second", type=float, metavar="N", help="training throughput per GPU, for the time")
    p.add_argument("--price-per-gpu-hour", type=float, metavar="PRICE", help="for the cost (with --tokens-per-second)")
    p.add_argument("--train-rows", type=int, metavar="N", help="training rows, when the data is not local")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("report", help="write a run's self-contained report.html (curves, sanity, masking, settings)")
    p.add_argument("location", metavar="RUN_DIR|OUTPUT_URI",
                   help="a run directory (runs/<name>), an exported model directory, or spec.output.uri (s3://, file://)")
    p.add_argument("-o", "--out", metavar="FILE", help="where to write it (default: report.html in the current directory)")
    p.add_argument("--endpoint", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--region", help="S3 region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="run the whole job locally (or in the training container)")
    p.add_argument("file", metavar="FILE", help="an SFTJob manifest or a run config JSON")
    p.add_argument("--output", metavar="DIR", help="working/output directory (default: ./runs/<name>)")
    p.add_argument("--report", metavar="FILE", help="also write the final report JSON here")
    p.add_argument("--skip-sanity", action="store_true", help="skip the sanity check (the pod's init container already ran it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo-model", help="prepare the offline demo model (SmolLM2-135M-Instruct)")
    p.add_argument("dir", nargs="?", metavar="DIR", help="target directory (default: ~/.cache/sftjob/demo-model)")
    p.set_defaults(func=cmd_demo_model)

    # The operator parses its own options (`sftjob operator --help`); everything after the word goes there.
    p = sub.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sftjob` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:
        args = argparse.Namespace(func=cmd_operator, operator_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
