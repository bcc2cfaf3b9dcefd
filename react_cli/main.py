"""``react``: the command line. Pure commands call react_core; pipeline commands run the Prefect flows."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from react_core.config import ConfigError, ReactConfig
from react_core.config_loading import load_config

_logger = logging.getLogger("react")
DEMO_PRESET = Path(__file__).resolve().parents[1] / "deployments" / "demo.yaml"


def _env_defaults() -> None:
    # Set before prefect/img2dataset are imported, which read them at import: the ephemeral server's
    # telemetry otherwise fights over its sqlite file, and albumentations phones home at import.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "react_core")  # the library's lines in the run's logs
    # Prefect's temporary server can take a minute to start on a loaded 2-core host; its default is 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _config(args: argparse.Namespace) -> ReactConfig:
    return load_config(args.config, args.set or [])


def _storage(cfg: ReactConfig):
    from react_core.storage import Storage

    return Storage(cfg.storage.root, cfg.storage.options)


# -- commands -------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_config(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        try:
            load_config(path)
            print(f"ok      {path}")
        except ConfigError as exc:
            bad += 1
            print(f"invalid {exc}")
    return 1 if bad else 0


def cmd_miniweb_generate(args: argparse.Namespace) -> int:
    from react_core.pipeline import run_miniweb

    cfg = _config(args)
    storage = _storage(cfg)
    uri = run_miniweb(storage, miniweb=cfg.miniweb, processes=args.processes, progress=not args.quiet)
    manifest = storage.stage_manifest(uri)
    print(uri)
    for k, v in sorted(manifest["counts"].items()):
        print(f"  {k:28s} {v:>10,}")
    return 0


def cmd_miniweb_serve(args: argparse.Namespace) -> int:
    from react_core.miniweb.serve import MiniWebServer
    from react_core.pipeline import run_miniweb

    cfg = _config(args)
    storage = _storage(cfg)
    uri = args.uri or run_miniweb(storage, miniweb=cfg.miniweb, progress=not args.quiet)
    server = MiniWebServer(storage, uri, host="127.0.0.1", port=args.port)
    if args.write_urls:
        server.urls().to_parquet(args.write_urls)
        print(f"wrote {args.write_urls} (key, url, caption) for {server.base_url}")
    print(f"serving {uri}/kb at {server.base_url} (Ctrl-C to stop)", flush=True)
    # Stop on Ctrl-C and on a process manager's SIGTERM, also where SIGINT was inherited as ignored (a
    # shell without job control starts background commands so, and Python then installs no handler).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_base_pretrain(args: argparse.Namespace) -> int:
    from react_core.pipeline import run_miniweb, run_pretrain_base
    from react_core.tracking import make_tracker

    cfg = _config(args)
    storage = _storage(cfg)
    miniweb = run_miniweb(storage, miniweb=cfg.miniweb, progress=not args.quiet)
    uri = run_pretrain_base(
        storage,
        model=cfg.model,
        miniweb_uri=miniweb,
        tracker=make_tracker(cfg.tracking, storage),
        progress=not args.quiet,
    )
    print(uri)
    print(json.dumps(storage.stage_manifest(uri)["metrics"], indent=2))
    return 0


def _demo_table(cfg: ReactConfig, result: dict[str, Any]) -> str:
    from react_core.tracking import default_tracking_uri

    tasks = ", ".join(cfg.retrieval.target_tasks)
    how = f"{result['choice']['picked']} (chosen without labels)" if result.get("choice") else cfg.training.mode
    lines = ["", f"REACT on the mini-web: retrieval for {tasks}, {how} customization", ""]
    from react_core.summary import ROLES, customized_model, dataset_roles

    roles = dataset_roles(cfg)
    lines.append(f"{'dataset':18s} {'role':9s} {'metric':9s} {'base':>7s} {'customized':>11s} {'delta':>8s}")
    for task, row in sorted(result["table"].items(), key=lambda kv: (ROLES.index(roles.get(kv[0], "other")), kv[0])):
        lines.append(
            f"{task:18s} {roles.get(task, 'other'):9s} {row['metric']:9s} {row['base']:>7.3f} "
            f"{row['customized']:>11.3f} {row['delta']:>+8.3f}"
        )
    lines.append("(target: what retrieval was for; generic: what the base knew; retrieval: image-text recall@1)")
    lines.append("")
    lines.append(f"customized model: {customized_model(result)}")
    if choice := result.get("choice"):
        lines.append(f"chosen without labels: {choice['reason']}")
    if (reg := result.get("registered")) and reg.get("version"):
        alias = ("champion" if reg.get("champion") else "candidate") if reg.get("new") else None
        where = f" (now models:/{reg['name']}@{alias})" if alias else " (registered by an earlier run)"
        lines.append(f"registered:       models:/{reg['name']}/{reg['version']}{where}")
    tracking = cfg.tracking.tracking_uri or default_tracking_uri(_storage(cfg))[0]
    if cfg.tracking.enabled:
        lines.append(f"MLflow:  run {result['mlflow_run_id']}; see it with: mlflow ui --backend-store-uri {tracking}")
    lines.append(
        f"Prefect: flow run {result['flow_run_id']}; see it with: prefect server start  (http://127.0.0.1:4200)"
    )
    return "\n".join(lines)


def _run_flow(flow: Callable[..., Any], **params: Any) -> Any:
    """Run a flow the way every command does: Prefect's temporary server started first, so that processes on one
    PREFECT_HOME never race its database migration and a busy host does not time it out; runs that a killed
    ``react`` left Running marked Crashed; this run tagged with its host and process, for the next start to do the
    same; the console spared the tracebacks of faults that main() says in one line (the Prefect UI keeps them)."""
    from react_cli.prefect_api import cli_tags, crash_dead_runs, ensure_api

    ensure_api()
    if crashed := crash_dead_runs():
        _logger.warning(
            "marked Crashed: %s (Running, but the react process that ran them was killed)", ", ".join(crashed)
        )
    import prefect

    _quiet_console()
    with prefect.tags(*cli_tags()):
        return flow(**params)


class _OneLineFaults(logging.Filter):
    """On the console's handler: a logged fault that main() prints as one ``error:`` line loses its traceback
    there (the task and the flow each logged it, with every frame). The API handler, which feeds the Prefect UI,
    saw the record first and keeps it whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and _one_line(record.exc_info[1]):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_console() -> None:
    import mlflow  # noqa: F401 - it gives its logger a console handler of its own when imported
    from prefect.logging.handlers import APILogHandler

    # What prints: the root's handler (ours, from logging.basicConfig in main(), which Prefect then leaves in
    # place, or Prefect's console handler) and MLflow's own; the API handlers of the flow and task loggers, which
    # feed the Prefect UI, are left as they are.
    for name in ("", "mlflow"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, APILogHandler) and not any(
                isinstance(f, _OneLineFaults) for f in handler.filters
            ):
                handler.addFilter(_OneLineFaults())


def cmd_demo(args: argparse.Namespace) -> int:
    if args.config is None and DEMO_PRESET.exists():
        args.config = str(DEMO_PRESET)
    cfg = _config(args)
    from react_core.preflight import check_customize

    check_customize(cfg, _storage(cfg))  # before the flow: a bad input is one line, not a failed flow run
    from flows.customize import customize

    result = _run_flow(customize, config=cfg)
    print(_demo_table(cfg, result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from react_core.preflight import check_evaluate

    check_evaluate(cfg, _storage(cfg), args.customized)
    from flows.evaluate import evaluate

    result = _run_flow(evaluate, config=cfg, customized=args.customized)
    st = _storage(cfg)
    print(st.read_bytes(f"{result['evaluate']}/table.md").decode(), end="")
    print(f"\nmetrics: {result['evaluate']}/metrics.json\nplot:    {result['evaluate']}/deltas.png")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from flows.ablate import ablate, grid_file
    from react_core.ablation import load_grid
    from react_core.preflight import check_ablation, check_customize

    path = grid_file(args.grid)
    check_ablation(load_grid(path, cfg), path)  # before the flow: a bad grid is one line per problem, nothing run
    check_customize(cfg, _storage(cfg))
    result = _run_flow(ablate, config=cfg, grid=args.grid)
    st = _storage(cfg)
    print(st.read_bytes(f"{result['ablation']}/ablation.md").decode(), end="")
    print(f"\ntables: {result['ablation']}/ablation.md, ablation.json; plots: {result['ablation']}/*.png")
    return 0


# -- parser ------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="a preset YAML (see deployments/); defaults otherwise")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override, e.g. -s training.lr=1e-4")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="react", description="REACT: customize a CLIP model to a task from its class names alone."
    )
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="run the customize flow on the embedded mini-web (preset deployments/demo.yaml) and print results"
    )
    _common(demo)
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser(
        "evaluate",
        help="zero-shot (and few-shot probe) of model.pretrained, and of --customized against it, on evaluation.tasks",
    )
    _common(ev)
    ev.add_argument(
        "--customized",
        metavar="URI",
        help="a customized checkpoint to compare with the base, or a registered version: models:/NAME@ALIAS, "
        "models:/NAME/VERSION",
    )
    ev.set_defaults(func=cmd_evaluate)

    ab = sub.add_parser(
        "ablate",
        help="run an ablation grid (tuning strategy, retrieval size, search mode, gated layers, filtering, ...) on "
        "the preset's knowledge base, with seeds; writes ablation.md / ablation.json and a plot per axis",
    )
    _common(ab)
    ab.add_argument(
        "--grid", "-g", default="small", help="a grid YAML, or the name of one in deployments/grids/ (default: small)"
    )
    ab.set_defaults(func=cmd_ablate)

    config = sub.add_parser("config", help="show or validate configurations")
    csub = config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    show = csub.add_parser("show", help="print the validated config tree as YAML")
    _common(show)
    show.set_defaults(func=cmd_config_show)
    val = csub.add_parser("validate", help="validate preset files")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=cmd_config_validate)

    mw = sub.add_parser("miniweb", help="the generated mini-web world")
    msub = mw.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    gen = msub.add_parser("generate", help="generate the corpus, knowledge base and target tasks")
    _common(gen)
    gen.add_argument("--processes", type=int, default=None)
    gen.set_defaults(func=cmd_miniweb_generate)
    serve = msub.add_parser("serve", help="serve the knowledge base's images on 127.0.0.1 over HTTP")
    _common(serve)
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--uri", help="a mini-web stage URI (default: generate/find it from the config)")
    serve.add_argument("--write-urls", metavar="PARQUET", help="write key,url,caption with this server's URLs")
    serve.set_defaults(func=cmd_miniweb_serve)

    base = sub.add_parser("base", help="the mini-web's tiny base CLIP")
    bsub = base.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    pre = bsub.add_parser("pretrain", help="pretrain it (model.pretrain.split=kb gives the oracle)")
    _common(pre)
    pre.set_defaults(func=cmd_base_pretrain)
    return parser


_FULL = ("No space left on device", "database or disk is full")  # the OS's words, and sqlite's (MLflow's store)


def _disk_full(exc: BaseException | None) -> tuple[str, str | None] | None:
    """(what was said, the file) of the ENOSPC behind ``exc`` (its causes and contexts too: torch, img2dataset,
    MLflow and Prefect wrap it, often in messages many lines long), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return os.strerror(errno.ENOSPC), str(exc.filename) if exc.filename else None
        if said := next((m for m in _FULL if m in str(exc)), None):
            return said, None
        exc = exc.__cause__ or exc.__context__
    return None


def _finished_stages(root: str) -> str:
    """What a run that stopped keeps under ``root``, for the message: its finished stages, named when local."""
    from react_core.storage import local_path

    folder = local_path(root)
    if folder is None:
        return "every finished stage is kept and the run resumes from them"
    names = sorted({p.parent.parent.name for p in Path(folder).glob("*/*/_SUCCESS")})
    if not names:
        return "no stage had finished yet"
    return f"the finished stages ({', '.join(names)}) are kept and the run resumes from them"


def _one_line(exc: BaseException, root: str = "the storage root") -> str | None:
    """What the user is told of ``exc`` when it is a fault they can fix (``error:`` lines, no traceback): the
    project's own errors, a full disk, a tracking server that went away; None for anything else (a bug: it keeps
    its traceback)."""
    from react_core.errors import ReactError
    from react_core.tracking import unreachable_server

    if isinstance(exc, ReactError):  # they name the field or file and the fix
        return "\n".join(f"error: {line}" for line in str(exc).splitlines())
    if full := _disk_full(exc):
        message, file = full
        where = f"{file} (storage root {root})" if file else root
        return (
            f"error: no space left on the device holding {where} ({message}); fix: free space there (or point "
            f"storage.root at a larger disk) and run again: {_finished_stages(root)}"
        )
    if server := unreachable_server(exc):
        return (
            f"error: the MLflow tracking server {server} stopped answering; fix: start it again (or set "
            "tracking.enabled=false) and run again: every finished stage is kept and the run resumes from them"
        )
    return None


def _root_of(args: argparse.Namespace) -> str:
    try:
        return _config(args).storage.root
    except Exception:  # noqa: BLE001 - only for the message
        return "the storage root"


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    # Our loggers at the chosen level; third parties (httpx, open_clip's root logging) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("react", "react_core", "react_cli", "tasks", "flows"):
        logging.getLogger(name).setLevel(args.log_level.upper())

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        if (line := _one_line(exc, _root_of(args))) is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT; finished stages are kept
        print("interrupted: the run stopped; finished stages are kept and the next run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
