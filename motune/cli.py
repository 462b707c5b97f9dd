"""The ``motune`` command: run, resume, scale out, inspect, plot and export studies.

Exit codes: 0 success; 2 bad usage or input (config, storage URL, data, checkpoint),
with one clear message and no traceback; 1 a run that failed; 130 interrupted by SIGINT
(Ctrl-C), 143 by SIGTERM: the running trial is then FAIL with ``fail_reason`` and queued
again, and the same command resumes. Storage URLs are printed with the password masked;
``$MOTUNE_STORAGE`` is the default ``--storage`` (keeps a password off command lines).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna

from motune.checkpoint import CheckpointError
from motune.config import ConfigError, StudyConfig
from motune.data import DataError
from motune.export import ExportError
from motune.faults import DEFAULT_GRACE, DEFAULT_HEARTBEAT, Interrupted, handle_signals, interruptible
from motune.patience import DEFAULT_PATIENCE, StorageUnavailable, patient
from motune.report import TABLE_HEAD, Progress, dashboard_command, print_summary
from motune.storage import (
    StudyError,
    default_artifact_dir,
    default_journal_url,
    default_storage_url,
    is_journal_file,
    mask_secrets,
    mask_url,
    open_storage,
    planning_lock_for,
)
from motune.study import cached_dataset, load_study_config
from motune.workers import PARENT_ENV, STORAGE_ENV, run_local_workers, start_setting

DEFAULT_CONFIG_NOTE = "the built-in digits study (same as studies/digits.toml)"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------- helpers


def _load_config(path: str | None, data_dir: str | None = None) -> tuple[StudyConfig, str]:
    config = StudyConfig() if path is None else StudyConfig.load(path)
    if data_dir is not None:
        config.data.data_dir = data_dir
        config.validate()
    return config, DEFAULT_CONFIG_NOTE if path is None else path


def _open_existing_study(args: argparse.Namespace) -> tuple[optuna.Study, str]:
    """Open the study named by --study (or the only one) in --storage; never creates anything.

    Workers (commands with ``--storage-patience``) get a storage that rides out outages.
    """
    url = args.storage or default_storage_url(args.study or StudyConfig().study.name)
    storage = open_storage(url, must_exist=True)
    if getattr(args, "storage_patience", None) is not None:
        storage = patient(storage, args.storage_patience)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    name = args.study
    if name is None:
        if len(names) != 1:
            raise UsageError(
                f"storage {mask_url(url)!r} holds {len(names)} studies ({', '.join(names) or 'none'}); pick one with --study NAME"
            )
        name = names[0]
    if name not in names:
        raise UsageError(f"study {name!r} not found in {mask_url(url)!r}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage), url


def _check_run_options(args: argparse.Namespace) -> None:
    """Range checks argparse cannot do (exit 2 with the option named)."""
    if args.n_trials is not None and args.n_trials < 1:
        raise UsageError(f"--n-trials: must be a positive integer, got {args.n_trials}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout: must be seconds > 0, got {args.timeout}")
    if getattr(args, "workers", 1) < 1:
        raise UsageError(f"--workers: must be a positive integer, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: must be a positive integer, got {args.threads}")
    if args.heartbeat < 0:
        raise UsageError(f"--heartbeat: must be seconds >= 0 (0 turns heartbeats off), got {args.heartbeat}")
    if args.heartbeat and args.grace <= args.heartbeat:
        raise UsageError(f"--grace: must be longer than --heartbeat ({args.heartbeat} s), got {args.grace}")
    if not args.storage_patience >= 0:
        raise UsageError(f"--storage-patience: must be seconds >= 0, got {args.storage_patience}")
    if getattr(args, "workers", 1) > 1:
        try:
            start_setting()  # how local workers start ($MOTUNE_WORKER_START)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.device is not None:
        from motune.train import check_device

        try:
            check_device(args.device)
        except ValueError as exc:
            raise UsageError(f"--{exc}") from None


def _local_device(args: argparse.Namespace, config: StudyConfig) -> str:
    """The device this process's training uses: ``--device``, else the config's; exit 2 when this machine lacks it."""
    from motune.train import resolve_device

    device = args.device if args.device is not None else config.train.device
    try:
        resolve_device(device)
    except ValueError as exc:
        raise UsageError(f"--{exc}" if args.device is not None else f"train.{exc}, or pass --device DEV") from None
    return device


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _artifact_dir(args: argparse.Namespace, url: str, study_name: str) -> Path:
    return Path(args.artifacts) if getattr(args, "artifacts", None) else default_artifact_dir(url, study_name)


# ----------------------------------------------------------------------------- commands


def _work(
    args: argparse.Namespace, config: StudyConfig, study: optuna.Study, url: str, artifact_dir: Path, target: int,
    worker_index: int,
) -> optuna.Study:
    """Train the study's trials in this process (``run`` with one worker, and ``worker``) with progress output."""
    from motune.dashboard import dashboard_callbacks
    from motune.faults import worker_seed
    from motune.study import Objective, run_study

    progress = Progress(target, config, enabled=not args.quiet)
    objective = Objective(config, str(artifact_dir), on_epoch=progress.on_epoch, on_start=progress.on_start,
                          heartbeat_interval=args.heartbeat or None)
    return run_study(
        config, study._storage, study_name=study.study_name, join=True, n_trials=target, timeout=args.timeout,
        artifact_dir=artifact_dir, objective=objective,
        callbacks=[*dashboard_callbacks(config, artifact_dir), progress.after_trial],  # notes and figures, if installed
        seed=worker_seed(config.study.seed, worker_index), grace_period=args.grace if args.heartbeat else None,
        storage_patience=args.storage_patience, planning_lock=planning_lock_for(url, study.study_name),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from motune.study import create_or_load_study

    config, source = _load_config(args.config, args.data_dir)
    _check_run_options(args)
    device = _local_device(args, config)
    _set_threads(args)
    name = args.study or config.study.name
    url = args.storage or (default_journal_url(name) if args.workers > 1 else default_storage_url(name))
    with interruptible():
        cached_dataset(config)  # a missing or corrupt data file fails here, before the storage is touched
    storage = patient(open_storage(url), args.storage_patience)
    study = create_or_load_study(config, storage, name)  # a config mismatch fails here, before any output
    artifact_dir = _artifact_dir(args, url, name)
    target = args.n_trials or config.study.n_trials
    print(f"motune: study {name!r} from {source}; storage {mask_url(url)}; checkpoints in {artifact_dir}", flush=True)
    workers = f" by {args.workers} worker processes" if args.workers > 1 else ""
    print(f"up to {target} completed trials{workers}; the search stops when the knee is confirmed and retrained", flush=True)
    if args.workers > 1:
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
        options = ["--artifacts", str(artifact_dir), "--threads", str(threads), "--heartbeat", str(args.heartbeat),
                   "--grace", str(args.grace), "--storage-patience", str(args.storage_patience)]
        options += ["--timeout", str(args.timeout)] if args.timeout is not None else []
        options += ["--config", str(Path(args.config).resolve())] if config.import_paths() else []
        code = run_local_workers(study, url, args.workers, target, options, args.quiet, device=device, threads=threads,
                                 runs_user_code=bool(config.import_paths()))
    else:
        print(TABLE_HEAD, flush=True)
        study = _work(args, config.on_device(device), study, url, artifact_dir, target, worker_index=0)
        code = 0
    print()
    print_summary(study, config)
    print(f"\ninspect it:  {dashboard_command(url, artifact_dir)}")
    print(f"export it:   motune export --storage {mask_url(url)} --study {name} --out {name}-pareto")
    print(f"add workers: motune worker --storage {mask_url(url)} --study {name}")
    return code


def _worker_config(args: argparse.Namespace, stored: StudyConfig, name: str) -> StudyConfig:
    """The config a worker trains with; refuses to run import paths read from the storage unless trusted.

    Whoever can write the study's stored config in a shared database must not be able to
    make a worker call arbitrary code (``"subprocess:run"``). A worker calls the stored
    import paths only when started with the study's config file itself (it must equal the
    stored config; its folder becomes importable) or with ``--trust-study-config``.
    """
    if args.config is not None:
        local, _ = _load_config(args.config)
        local.data.data_dir = stored.data.data_dir  # a --data-dir given to `run`/`create` is part of the stored config
        if local.on_device(stored.train.device) != stored:  # the device is the file's local choice
            raise UsageError(f"{args.config} differs from the config stored in study {name!r}; start the worker with "
                             "the file the study was created from")
        return stored.on_device(local.train.device)
    paths = stored.import_paths()
    if paths and not args.trust_study_config:
        named = ", ".join(f"{key} = {value!r}" for key, value in paths.items())
        raise UsageError(f"study {name!r} names code to run ({named}); a worker runs it only when started with the "
                         "study's config file (--config FILE.toml) or with --trust-study-config, if you trust everyone "
                         "who can write to this storage")
    return stored


def cmd_worker(args: argparse.Namespace) -> int:
    from motune.faults import default_worker_index, host_name

    if not args.storage:
        raise UsageError(f"--storage URL is required (or set ${STORAGE_ENV}): the storage of the study to join")
    _check_run_options(args)
    _set_threads(args)
    study, url = _open_existing_study(args)
    config = _worker_config(args, load_study_config(study), study.study_name)
    if args.data_dir is not None:
        config.data.data_dir = args.data_dir
        config.validate()
    config = config.on_device(_local_device(args, config))
    with interruptible():
        cached_dataset(config)
    name = study.study_name
    artifact_dir = _artifact_dir(args, url, name)
    target = args.n_trials or config.study.n_trials
    index = args.worker_index if args.worker_index is not None else default_worker_index()
    if not args.quiet:
        print(f"motune worker {host_name()}:{os.getpid()}: study {name!r} in {mask_url(url)}; up to {target} completed trials; "
              f"checkpoints in {artifact_dir}", flush=True)
        print(TABLE_HEAD, flush=True)
    study = _work(args, config, study, url, artifact_dir, target, worker_index=index)
    if not args.quiet:
        print()
        print_summary(study, config)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from motune.study import create_or_load_study

    config, source = _load_config(args.config, args.data_dir)
    if config.import_paths():  # the user's model and data must load here, before a study names them
        with interruptible():
            cached_dataset(config)
    name = args.study or config.study.name
    url = args.storage or default_storage_url(name)
    study = create_or_load_study(config, open_storage(url), name)
    n = len(study.get_trials(deepcopy=False))
    print(f"study {name!r} from {source} is ready in {mask_url(url)} ({n} trials so far); add workers with:\n"
          f"  motune worker --storage {mask_url(url)} --study {name}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    study, _ = _open_existing_study(args)
    print_summary(study, load_study_config(study))
    return 0


def _selected(args: argparse.Namespace, study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The trial the --max-* rule (or the knee) picks; a bad value or an empty budget is one line, exit 2."""
    from motune.selection import RULES, SelectionError, select

    rules = {name: getattr(args, name) for name in RULES}
    try:
        return select(study, **rules, config=load_study_config(study))
    except SelectionError as exc:
        option = exc.option
        for name in RULES:
            option = option.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(f"{option}: {exc.detail}") from None


def _rule_text(args: argparse.Namespace) -> str:
    from motune.selection import RULES

    given = [f"--{name.replace('_', '-')} {getattr(args, name):g}" for name in RULES if getattr(args, name) is not None]
    return given[0] if given else "the knee"


def cmd_select(args: argparse.Namespace) -> int:
    from motune.report import fmt_lambda
    from motune.trials import CHECKPOINT, FIDELITY, trial_kind, trial_lambda

    if args.config is not None and args.study is None:
        args.study = _load_config(args.config)[0].study.name
    study, _ = _open_existing_study(args)
    t = _selected(args, study)
    a = t.user_attrs
    print(f"selected by {_rule_text(args)} (on validation metrics; the test split is not used to choose):")
    print(f"trial {t.number} ({trial_kind(t)}, {a.get(FIDELITY)}, lambda {fmt_lambda(trial_lambda(t))}): "
          f"val accuracy {100 * a['val_accuracy']:.2f}%, test accuracy {100 * a.get('test_accuracy', float('nan')):.2f}%, "
          f"{a['nonzeros']} of {a.get('penalised_size', '?')} penalised weights kept ({100 * a['fraction_kept']:.2f}%); "
          f"checkpoint artifact {a.get(CHECKPOINT, 'none')}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore

    from motune.export import export_pareto
    from motune.selection import RULES
    from motune.study import knee_trial

    study, url = _open_existing_study(args)
    artifact_dir = _artifact_dir(args, url, study.study_name)
    knee = knee_trial(study, load_study_config(study))
    select = args.select or any(getattr(args, name) is not None for name in RULES)
    chosen = _selected(args, study) if select else None
    summary = export_pareto(study, Path(args.out), FileSystemArtifactStore(str(artifact_dir)), knee, selected=chosen)
    what = f"checkpoints/ with trial {chosen.number} only, selected by {_rule_text(args)}" if chosen else "checkpoints/"
    print(f"exported {summary.rows} Pareto trials of study {study.study_name!r} to {args.out} "
          f"(pareto.csv, pareto.json, {what})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore

    from motune.plots import write_plots
    from motune.study import knee_trial

    study, url = _open_existing_study(args)
    knee = knee_trial(study, load_study_config(study))
    store = FileSystemArtifactStore(str(_artifact_dir(args, url, study.study_name)))  # the knee's history artifact
    paths = write_plots(study, Path(args.out), knee, store)
    for p in paths:
        print(p)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from motune.dashboard import DashboardCallback

    study, url = _open_existing_study(args)
    artifact_dir = _artifact_dir(args, url, study.study_name)
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        print("motune: optuna-dashboard is not installed; install it with\n  pip install 'motune[dashboard]'\n"
              f"then run:\n  {dashboard_command(url, artifact_dir)}", file=sys.stderr)
        return 1
    DashboardCallback().refresh_figures(study)  # current (and whole) figures, also for a study run without them
    target = url.removeprefix("journal:") if is_journal_file(url) else url
    cmd = [exe, target, "--artifact-dir", str(artifact_dir), "--host", args.host, "--port", str(args.port)]
    print("running: " + " ".join(cmd).replace(target, mask_url(target)), flush=True)
    return subprocess.call(cmd)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motune",
        description="Find sparse, accurate networks: biobjective training with intra-training pruning, "
        "searched as an Optuna multi-objective study.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def storage_opts(p: argparse.ArgumentParser, default: str = "sqlite:///STUDY.db in this directory") -> None:
        p.add_argument("--storage", metavar="URL", default=os.environ.get(STORAGE_ENV) or None,
                       help=f"Optuna storage URL: sqlite:///FILE.db, postgresql://..., mysql+pymysql://..., "
                       f"redis://HOST:PORT[/DB][?prefix=NAME], journal:FILE (default: ${STORAGE_ENV}, else {default})")
        p.add_argument("--study", metavar="NAME", help="study name (default: the config's name, or the storage's only study)")
        p.add_argument("--artifacts", metavar="DIR", help="checkpoint (artifact) directory (default: beside the storage file)")

    def worker_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n-trials", type=int, metavar="N", help="completed trials for the whole study (default: the config's)")
        p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting new trials after this long")
        p.add_argument("--data-dir", metavar="DIR", help="directory with the data set's files (overrides the config)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or per-trial lines")
        p.add_argument("--threads", type=int, metavar="N", help="torch threads per process (default: torch's; "
                       "with --workers: CPU cores / workers)")
        p.add_argument("--device", metavar="DEV",
                       help="train on auto, cpu, cuda or cuda:N (default: the config's [train] device; a local choice, "
                       "the study's stored config keeps its own; with --workers, auto or cuda give worker i "
                       "cuda:(i mod number of GPUs))")
        p.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT, metavar="SECONDS",
                       help=f"a running trial proves its worker alive this often (default {DEFAULT_HEARTBEAT}; 0: off, "
                       "then only a dead process on the same host is noticed)")
        p.add_argument("--grace", type=int, default=DEFAULT_GRACE, metavar="SECONDS",
                       help=f"a trial without a heartbeat for this long is failed and run again (default {DEFAULT_GRACE})")
        p.add_argument("--storage-patience", type=float, default=DEFAULT_PATIENCE, metavar="SECONDS",
                       help=f"keep retrying an unreachable storage this long before stopping with exit code 1 "
                       f"(default {DEFAULT_PATIENCE:g})")

    def select_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-accuracy-drop", type=float, metavar="X",
                       help="the sparsest network within X (a fraction: 0.01 = 1 pp) of the best validation accuracy")
        p.add_argument("--max-nonzeros", type=int, metavar="N", help="the most accurate network with at most N nonzero weights")
        p.add_argument("--max-fraction", type=float, metavar="F",
                       help="the most accurate network with at most the fraction F (0..1) of penalised weights kept")

    run = sub.add_parser("run", help="create or resume a study and run it", description="Create or resume a study and run it.")
    run.add_argument("config", nargs="?", help=f"study config TOML (default: {DEFAULT_CONFIG_NOTE})")
    storage_opts(run)
    worker_opts(run)
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="worker processes on this machine (default 1; with N > 1 the default storage is journal:STUDY.journal; "
                     "where safe (CPU, one thread each, no code named in the config) they are forked from this "
                     "process; $MOTUNE_WORKER_START=spawn starts fresh ones)")
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser(
        "worker", help="join an existing study as one more worker (any machine that reaches the storage)",
        description="Join an existing study and train its trials until it has --n-trials completed trials. "
        "The config comes from the study itself.",
    )
    storage_opts(worker, default="none: required")
    worker_opts(worker)
    worker.add_argument("--worker-index", type=int, metavar="I",
                        help="seeds this worker's own random stream (default: from host name and process id)")
    worker.add_argument("--config", metavar="FILE",
                        help="the study's config file: lets the worker run the import paths it names (its folder "
                        "becomes importable); it must equal the config stored in the study")
    worker.add_argument("--trust-study-config", action="store_true",
                        help="run the import paths of the config stored in the study (code named by whoever can "
                        "write to the storage); their modules must be importable here")
    worker.set_defaults(func=cmd_worker)

    create = sub.add_parser("create", help="create a study (config stored in it) without running trials",
                            description="Create (or check) a study so that workers can join it.")
    create.add_argument("config", nargs="?", help=f"study config TOML (default: {DEFAULT_CONFIG_NOTE})")
    storage_opts(create)
    create.add_argument("--data-dir", metavar="DIR", help="directory with the data set's files (overrides the config)")
    create.set_defaults(func=cmd_create)

    status = sub.add_parser("status", help="trials by state, Pareto front, knee, hypervolume",
                            description="Show a study's state.")
    storage_opts(status)
    status.set_defaults(func=cmd_status)

    export = sub.add_parser("export", help="write the Pareto set: pareto.csv, pareto.json, pruned checkpoints",
                            description="Export the Pareto set as a table and pruned checkpoints.")
    storage_opts(export)
    export.add_argument("--out", required=True, metavar="DIR", help="output directory")
    export.add_argument("--select", action="store_true",
                        help="write only the selected network's checkpoint (the knee, or the --max-* rule's pick; "
                        "a --max-* option implies --select); pareto.csv and pareto.json as without it")
    select_opts(export)
    export.set_defaults(func=cmd_export)

    select = sub.add_parser("select", help="print the network a rule picks: the knee, or by accuracy drop or size budget",
                            description="Pick one network of the study (ranked by validation accuracy; the test split "
                            "is not used to choose). Without a rule: the knee.")
    select.add_argument("config", nargs="?", help="study config TOML: its study name is the default --study and storage")
    storage_opts(select)
    select_opts(select)
    select.set_defaults(func=cmd_select)

    plot = sub.add_parser("plot", help="plotly HTML figures of the study", description="Write plotly HTML figures.")
    storage_opts(plot)
    plot.add_argument("--out", required=True, metavar="DIR", help="output directory")
    plot.set_defaults(func=cmd_plot)

    dash = sub.add_parser("dashboard", help="open the study in optuna-dashboard",
                          description="Start optuna-dashboard on the storage.")
    storage_opts(dash)
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8080)
    dash.set_defaults(func=cmd_dashboard)
    return parser


USER_ERRORS = (UsageError, ConfigError, StudyError, DataError, CheckpointError, ExportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``motune`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on bad usage
    # motune prints its own line per failed trial; Optuna's would add tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.captureWarnings(False)
    # run / worker turn SIGINT and SIGTERM into a clean stop; the other commands keep Python's default.
    guard = handle_signals() if args.command in ("run", "worker") else contextlib.nullcontext()
    with guard:
        try:
            return int(args.func(args) or 0)
        except USER_ERRORS as exc:
            print(f"motune: error: {mask_secrets(str(exc))}", file=sys.stderr)
            return 2
        except StorageUnavailable as exc:  # an outage longer than --storage-patience
            print(f"motune: {mask_secrets(str(exc))}", file=sys.stderr)
            return 1
        except Interrupted as exc:
            if not os.environ.get(PARENT_ENV):
                note = f"; {exc.note}" if exc.note else ""
                print(f"motune: {exc}{note}; run the same command again to resume", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("motune: interrupted; run the same command again to resume", file=sys.stderr)
            return 130
        except Exception as exc:  # a failed run: one line, not a traceback
            print(f"motune: run failed: {type(exc).__name__}: {mask_secrets(str(exc))}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
