"""The `regimes` command: train | sweep | validate | report | status.

Every bad input (unknown key, wrong type, out-of-range value, missing path)
prints one line `error: <key>: <what is allowed>` and exits with code 2 before
anything is written.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

from .core.config import TrainConfig, describe_fields   # torch-free: help stays fast
from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regimes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run; any TrainConfig field as key=value",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config fields:\n" + describe_fields())
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config fields (and out=DIR, where the Parquet results go)")
    p.add_argument("--config", help="YAML file of config fields (key=value arguments override it)")
    p.add_argument("--out", help="results folder (same as out=DIR)")
    p.add_argument("--name", default="run", help="trial id of this run in the results folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--pack", action="append", default=[], metavar="key=v1,v2,..",
                   help="train every combination of these values as one packed network (repeatable; "
                        "packable keys: the rates, their schedules, wd, momentum, noninv_lr, init_scale, seed); "
                        "member k is trial <name>_m<k>")
    p.set_defaults(func=_train_main)

    argv = list(sys.argv[1:] if argv is None else argv)
    _add_layer_commands(sub, argv)
    # options and key=value pairs of `train` mix freely (`train epochs=1 --quiet out=D`)
    args = p.parse_intermixed_args(argv[1:]) if argv[:1] == ["train"] else parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# subcommand -> (help, module, function adding its arguments, function running it)
LAYER_COMMANDS = {
    "sweep": ("run a study spec on Ray Tune", "regimes.study.launch", "add_sweep_arguments", "sweep_main"),
    "validate": ("check a study spec without starting anything", "regimes.study.launch",
                 "add_validate_arguments", "validate_main"),
    "report": ("classify regimes and draw phase diagrams of a results folder", "regimes.analysis.report",
               "add_arguments", "main"),
    "status": ("where a study stands: trials, progress, ETA, regimes so far (reads its folder; no Ray)",
               "regimes.study.status", "add_arguments", "main"),
}


def _add_layer_commands(sub, argv: list[str]) -> None:
    """The study (Ray) and analysis layers add their subcommands. Only the module of the
    subcommand being run is imported (`regimes train` never pays for Ray or seaborn, and
    `regimes --help` for neither)."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (help_, module, adder, runner) in LAYER_COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name != chosen:
            continue
        mod = importlib.import_module(module)
        getattr(mod, adder)(p)
        p.set_defaults(func=getattr(mod, runner))


# --- train -------------------------------------------------------------------
def _train_main(args) -> int:
    # every check before torch is imported and before anything is written
    from .study.spec.files import check_writable, name_problem, read_yaml

    out, rest, given = args.out, [], {}
    for tok in args.overrides:
        key = tok.split("=", 1)[0].strip()
        if "=" in tok and key in given:
            raise ConfigError(key, f"given twice ({given[key]} and {tok}); give each key once")
        given[key] = tok
        if key == "out" and "=" in tok:
            if args.out is not None:
                raise ConfigError("out", f"given twice (--out {args.out} and {tok}); give it once")
            out = tok.split("=", 1)[1]
        else:
            rest.append(tok)
    problem = name_problem(args.name, "trial id")
    if problem:
        raise ConfigError("--name", problem)
    base = {}
    if args.config:
        data = read_yaml(args.config, "a YAML file of config fields")
        if data is not None and not isinstance(data, dict):
            raise ConfigError(args.config, f"expected a mapping of config fields, got {type(data).__name__}")
        base = TrainConfig.from_dict(data or {}).to_dict()
    cfg = TrainConfig.from_cli(rest, base=base)
    members = _pack_members(args.pack, rest, base)
    if out is not None:
        if not out.strip():
            raise ConfigError("out", "empty; expected a folder (created if missing)")
        check_writable(out, "out")
    if members:
        return _train_pack(members, out, args)

    from . import results
    from .run import Trainer

    trainer = Trainer(cfg)
    records = []
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, unit="epoch", dynamic_ncols=True)
    for rec in trainer.run():
        records.append(rec)
        if bar is not None:
            bar.set_postfix_str(_progress(rec), refresh=False)
            bar.update(1)
        if out is not None:
            results.write_trial_epochs(out, args.name, results.epoch_rows(cfg, records, study=Path(out).name))
    if bar is not None:
        bar.close()
    last = records[-1]
    status = "diverged" if last["diverged"] else "completed"
    if out is not None:
        results.upsert_trials(out, [results.trial_summary(cfg, records, Path(out).name, args.name, status)])
    print(_summary(cfg, last, status))
    if out is not None:
        print(f"results: {Path(out) / 'epochs'} and {Path(out) / 'trials.parquet'}")
    return 0


def _pack_members(specs: list[str], rest: list[str], base: dict) -> list[TrainConfig]:
    """The configs of `--pack key=v1,v2 ...`: every combination, on top of the run's config."""
    import itertools

    from .core import packable

    axes = {}
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        if not eq or not values.strip():
            raise ConfigError("--pack", f"{spec!r}: expected key=v1,v2,.. (e.g. elr=1e-3,1e-2)")
        if key not in TrainConfig.field_names():
            raise ConfigError("--pack", f"{key!r} is not a TrainConfig field")
        if key not in packable.PER_MEMBER:
            raise ConfigError("--pack", f"{key} cannot differ within a pack; packable: "
                              f"{', '.join(sorted(packable.PER_MEMBER))}")
        if key in axes:
            raise ConfigError("--pack", f"{key} given twice")
        axes[key] = [v.strip() for v in values.split(",")]
    if not axes:
        return []
    cfgs = [TrainConfig.from_cli(rest + [f"{k}={v}" for k, v in zip(axes, combo)], base=base)
            for combo in itertools.product(*axes.values())]
    if cfgs:
        packable.check(cfgs)
    return cfgs


def _train_pack(cfgs: list[TrainConfig], out, args) -> int:
    """`regimes train --pack`: the members as one network; each member a trial of its own."""
    from . import results
    from .core.pack import PackedTrainer

    trainer = PackedTrainer(cfgs)
    records: dict[int, list[dict]] = {k: [] for k in range(len(cfgs))}
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfgs[0].epochs, unit="epoch", dynamic_ncols=True)
    for recs in trainer.run():
        for k, rec in recs.items():
            records[k].append(rec)
            if out is not None:
                rows = results.epoch_rows(cfgs[k], records[k], study=Path(out).name)
                for row in rows:
                    row["pack_id"] = args.name
                results.write_trial_epochs(out, f"{args.name}_m{k}", rows)
        if bar is not None:
            bar.set_postfix_str(f"{len(recs)} members training", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    summaries = []
    for k, cfg in enumerate(cfgs):
        last = records[k][-1]
        status = "diverged" if last["diverged"] else "completed"
        summaries.append(results.trial_summary(cfg, records[k], Path(out).name if out else "", f"{args.name}_m{k}",
                                               status, extra={"pack_id": args.name}))
        varied = " ".join(f"{key}={getattr(cfg, key)}" for key in _varied(cfgs))
        print(f"member {k} ({varied}): " + _summary(cfg, last, status))
    if out is not None:
        results.upsert_trials(out, summaries)
        print(f"results: {Path(out) / 'epochs'} and {Path(out) / 'trials.parquet'}")
    return 0


def _varied(cfgs: list[TrainConfig]) -> list[str]:
    return [k for k in TrainConfig.field_names() if len({repr(getattr(c, k)) for c in cfgs}) > 1]


def _progress(rec: dict) -> str:
    loss = rec["train_loss"] if math.isfinite(rec["train_loss"]) or rec["diverged"] else float("nan")
    return f"epoch {rec['epoch']} loss {loss:.4g} acc {rec['train_acc']:.3f} test {rec['test_acc']:.3f} elr {rec['elr']:.3g}"


def _summary(cfg: TrainConfig, last: dict, status: str) -> str:
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "si_norm", "elr", "eff_grad_norm", "angular_update")
    vals = "  ".join(f"{k}={last[k]:.4g}" for k in keys)
    return f"{cfg.model} {cfg.mode} on {cfg.dataset}: {status} after {last['epoch']} epochs\n  {vals}"


if __name__ == "__main__":
    sys.exit(main())
