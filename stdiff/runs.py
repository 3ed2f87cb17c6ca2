"""Run directories, checked before a run starts, with its checkpoint (``stdiff.checkpoints``).

Everything here runs before Lightning writes anything, so a bad checkpoint or an unwritable
output directory is reported with nothing created and no existing run touched.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path

from stdiff.checkpoints import RunError, check_compatible, check_same_data, load_checkpoint

LAST = "last.ckpt"
BEST = "best.ckpt"  # written by stdiff.callbacks.BestCheckpoint
claimed: Path | None = None  # the run directory this process claimed last (see discard_unused_run)


def claim_version(root: str | os.PathLike, prefix: str = "version_") -> int:
    """Create ``root/<prefix>N`` for the smallest free N above every existing one and return N.

    ``os.mkdir`` either creates the directory or fails, atomically, so two runs started at the
    same moment in the same place never share a version directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len(prefix) :]) for p in root.glob(f"{prefix}*") if p.name[len(prefix) :].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"{prefix}{version}").mkdir()
            global claimed
            claimed = root / f"{prefix}{version}"
            return version
        except FileExistsError:
            version += 1


def find_last_checkpoint(directories: list[Path], name: str = LAST, fits=None) -> Path | None:
    """The most recently written ``name`` (``last.ckpt``, or ``best.ckpt``) in ``directories`` (each
    a ``checkpoints`` folder or a folder of run directories holding one). With ``fits`` (a
    function of a checkpoint's path that raises ``RunError`` when it does not fit the run), the
    most recent that fits, each one passed over said; the most recent of all when none fits (its
    refusal then says why)."""
    found = []
    for d in directories:
        found += [d / name] if (d / name).is_file() else list(d.glob(f"*/checkpoints/{name}"))
    found = sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)
    if fits is None or len(found) < 2:
        return found[0] if found else None
    from lightning.pytorch.utilities import rank_zero_info

    for path in found:
        try:
            fits(path)
            return path
        except RunError as err:
            why = str(err).split(": ", 1)[-1].split(". Use ")[0]  # what differs, not the remedy
            rank_zero_info(f"--ckpt_path {name.removesuffix('.ckpt')}: passing over {path}: {why}")
    return found[0]


def check_writable(directory: str | os.PathLike) -> None:
    """Raise ``RunError`` unless ``directory`` exists and is writable, or could be created."""
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"output directory {str(directory)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(
            f"output directory {str(directory)!r} is not writable (no write permission on {str(existing)!r})"
        )
    if existing != directory:  # to be created: tried (permissions do not tell, e.g. under /proc), then undone
        times = existing.stat()
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".stdiff-probe-", dir=existing))
        except OSError as err:
            raise RunError(f"output directory {str(directory)!r} cannot be created: no directory can be made in "
                           f"{str(existing)!r} ({err.strerror or err})") from None  # fmt: skip
        with contextlib.suppress(OSError):
            os.utime(existing, ns=(times.st_atime_ns, times.st_mtime_ns))


def innermost_message(err: BaseException) -> str:
    """The message of the original error under jsonargparse's wrappers ("Does not validate...")."""
    chain = [err]
    # an error raised ``from None`` is the message meant (it replaces the one it suppresses)
    while (inner := err.__cause__ or (None if err.__suppress_context__ else err.__context__)) is not None and isinstance(
        inner, ValueError
    ):
        chain.append(err := inner)
    if not str(err).startswith(_NOT_NONE):
        return str(err)
    # Older jsonargparse (4.39) chains only the Optional's "Expected a NoneType" and lists the real
    # error in the text of the Union's message: take it from there.
    for outer in chain:
        found = _union_member_error(str(outer))
        if found:
            return found
    return str(err)


_NOT_NONE = "Expected a <class 'NoneType'>"


def _union_member_error(message: str) -> str | None:
    """The first error of a member other than None in jsonargparse's "Does not validate against any of
    the Union subtypes … Errors: - … - …" message, or None."""
    if "Union subtypes" not in message or "\nErrors:\n" not in message:
        return None
    listed = message.split("\nErrors:\n", 1)[1].split("\nGiven value", 1)[0]
    errors = [e.strip() for e in ("\n" + listed).split("\n  - ") if e.strip()]
    return next((e for e in errors if not e.startswith(_NOT_NONE)), None)


# --- before a run ------------------------------------------------------------------------------------


def preflight(subcommand: str, trainer, model, datamodule, kwargs: dict, data: dict | None = None,
              allow_other_data: bool = False) -> None:  # fmt: skip
    """Checks that need the instantiated classes, done before anything is written: the checkpoint
    (found, loadable without running pickled code, fits the model, trained on ``data``: the data's
    ``data_settings``, unless ``allow_other_data``), the request itself, the output directory.
    Then the run directory is claimed. Updates ``kwargs`` (the subcommand's arguments: ``ckpt_path``
    resolved, ``weights_only`` defaulted to True)."""
    from lightning.pytorch.cli import SaveConfigCallback
    from lightning.pytorch.utilities import rank_zero_info
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if kwargs.get("weights_only") is None:
        kwargs["weights_only"] = True  # torch < 2.6 would otherwise unpickle arbitrary objects
    logger = trainer.logger
    version = None
    ckpt_path = kwargs.get("ckpt_path")
    asked_last = ckpt_path == "last"

    def fits(path) -> None:  # a checkpoint of this configuration: its model and (unless allowed) its data
        import warnings

        checkpoint = load_checkpoint(path, kwargs["weights_only"])
        with warnings.catch_warnings():  # settings that only warn: said once, for the checkpoint taken
            warnings.simplefilter("ignore")
            check_compatible(checkpoint, path, model)
        if data is not None and not allow_other_data:
            check_same_data(checkpoint, path, data)

    if asked_last:
        ckpt_path = kwargs["ckpt_path"] = _find_last(trainer, fits=fits)
        if ckpt_path is None and subcommand == "fit":
            rank_zero_info("--ckpt_path last: no checkpoint yet, starting a new run")
        elif ckpt_path is not None and subcommand == "fit":
            rank_zero_info(f"--ckpt_path last: resuming from {ckpt_path}")
    elif ckpt_path == "best":
        # Lightning's "best" is the best model of a checkpoint callback in this process, which a new
        # process never has: stdiff's is the best.ckpt BestCheckpoint keeps in every run.
        ckpt_path = kwargs["ckpt_path"] = _find_last(trainer, BEST, fits)
        if ckpt_path is None:
            raise RunError(f"--ckpt_path best: no {BEST} under {trainer.default_root_dir} (every fit with validation "
                           f"keeps checkpoints/{BEST}: its validation forecasts' or val/loss's best, step 0 a candidate); pass --ckpt_path <run>/checkpoints/"
                           f"{BEST} or --ckpt_path last")  # fmt: skip
        if subcommand == "fit":
            rank_zero_info(f"--ckpt_path best: resuming from {ckpt_path}")
    run = _run_of(ckpt_path, logger, anywhere=subcommand != "fit")
    if subcommand == "fit" and asked_last and run is not None:
        version = run.name  # a resumed fit continues in the run directory it came from
    if ckpt_path not in (None, "best", "hpc", "registry") and not str(ckpt_path).startswith("registry:"):
        checkpoint = load_checkpoint(ckpt_path, kwargs["weights_only"])
        model.on_load_checkpoint(checkpoint)  # the sample shape, named first
        check_compatible(checkpoint, ckpt_path, model)
        if data is not None and not allow_other_data:
            check_same_data(checkpoint, ckpt_path, data)
        if version is not None:  # the run's config.yaml stays; this run's settings go beside it
            name = _free_name(run, f"config.resumed_step{checkpoint.get('global_step', 0)}", ".yaml")
            for cb in trainer.callbacks:
                if isinstance(cb, SaveConfigCallback):
                    cb.config_filename = name
    tasks = (("model.mask", model.mask), ("data.init_args.task", getattr(datamodule, "task", None)))
    for option, task in [(o, t) for o, t in tasks if t is not None]:  # a task that cannot fit the frames, now
        try:
            task.check(model.sample_shape)
        except ValueError as err:
            raise RunError(f"{option}: {err} (samples of shape {tuple(model.sample_shape)})") from None
    if subcommand == "fit":
        if not model.trainable:
            raise RunError(
                f"model.denoiser={type(model.denoiser).__name__} has nothing to train: use it with validate, test or "
                "predict"
            )
        model.configure_optimizers()  # a bad optimizer setting fails now, not after set-up
    if subcommand in ("validate", "test", "predict") and ckpt_path is None and model.trainable:
        # Only fit may start from scratch: scoring or sampling a randomly initialised network is never meant.
        how = "--ckpt_path last found no checkpoint" if asked_last else "pass --ckpt_path <file>.ckpt (or last)"
        raise RunError(f"{subcommand} needs a trained model: {how} under {trainer.default_root_dir}; or use "
                       "--model.denoiser=ExactDenoiser for the exact model")  # fmt: skip
    if subcommand == "predict":
        kwargs["return_predictions"] = False  # SampleWriter streams them to disk; none kept in memory
        if datamodule.num_predict == 0:
            raise RunError(
                "predict needs a number of samples: set data.init_args.num_predict (e.g. "
                "--data.init_args.num_predict=1000)"
            )
        if datamodule.observed is not None:
            if model.conditioning is None:
                raise RunError(f"data.init_args.observed={datamodule.observed} asks for conditional samples, but this "
                               "model is unconditional: set --model.conditioning=ReconstructionGuidance (or "
                               "Replacement), or use a conditional model (trained with model.mask)")  # fmt: skip
            datamodule.check_observations()  # the file read and checked now, before anything starts
    if model.denoiser.needs_truth and not datamodule.has_truth:
        raise RunError(f"model.denoiser={type(model.denoiser).__name__} needs data whose exact distribution is known "
                       f"(a data module with a `truth`, such as GPDataModule), or a Gaussian fitted to it "
                       f"(ArrayDataModule with data.init_args.reference); {type(datamodule).__name__} has none")  # fmt: skip
    from stdiff._validation import check_memory

    shape = datamodule.sample_shape  # a batch of data, its noise and noisy copy, and the network's output
    check_memory(f"batch_size={datamodule.batch_size} of samples {shape}", {"a batch": 4 * 4 * datamodule.batch_size *
                 math.prod(shape)}, "use a smaller data.init_args.batch_size")  # fmt: skip
    from stdiff.estimates import check_run

    check_run(subcommand, trainer, model, datamodule)  # step and sample counts: their memory and time
    out = getattr(logger, "root_dir", None) or trainer.default_root_dir
    if run is not None and subcommand != "fit" and not os.access(run, os.W_OK | os.X_OK):
        rank_zero_info(f"{subcommand}: the checkpoint's run {run} is not writable; writing under {out} instead")
        run = None
    check_writable(run if run is not None and subcommand != "fit" else out)
    if subcommand == "predict":
        check_disk(datamodule, model, run if run is not None else Path(out))
    if hasattr(logger, "_version") and getattr(logger, "_version", None) is None:
        # Claimed atomically on rank 0 (other ranks take rank 0's log directory from Lightning's
        # broadcast): concurrent runs never share a version directory.
        if version is not None:
            logger._version = version if not version.startswith("version_") else int(version[8:])
        elif rank_zero_only.rank == 0 and subcommand != "fit" and run is not None:
            # validate / test / predict of a run's checkpoint: beside its training, in <run>/<subcommand>_K
            # (an absolute path when the run lies outside the output directory: os.path.join keeps it)
            under = run.name if _inside(run, logger.root_dir) else str(run.absolute())
            logger._version = f"{under}/{subcommand}_{claim_version(run, prefix=f'{subcommand}_')}"
        elif rank_zero_only.rank == 0 and subcommand != "fit" and ckpt_path is None:
            # a model with nothing trained (the exact model): labelled, not one more version_N
            label = f"{type(model.denoiser).__name__.lower().removesuffix('denoiser') or 'untrained'}_{subcommand}_"
            logger._version = f"{label}{claim_version(logger.root_dir, prefix=label)}"
        elif rank_zero_only.rank == 0:
            logger._version = claim_version(logger.root_dir)


def _run_of(ckpt_path, logger, anywhere: bool = False) -> Path | None:
    """The run directory a checkpoint was written in (``<run>/checkpoints/x.ckpt``), when it lies
    under this logger's output directory (or, with ``anywhere``, wherever it lies); else None."""
    if ckpt_path is None or logger is None or not getattr(logger, "root_dir", None):
        return None
    path = Path(ckpt_path).absolute()
    if path.parent.name != "checkpoints" or len(path.parents) < 3:
        return None
    return path.parents[1] if anywhere or _inside(path.parents[1], logger.root_dir) else None


def _inside(run: Path, root) -> bool:
    return Path(run).absolute().parent == Path(root).absolute()


def check_disk(datamodule, model, directory: Path) -> None:
    """Refuse a predict whose samples (float32) need more than 95 % of the free space where they
    go, with both figures, before anything is drawn or written."""
    from stdiff._validation import check_disk_space

    cases = len(datamodule.check_observations()[0]) if datamodule.observed is not None else 1
    what = f"{cases} cases × " if datamodule.observed is not None else ""
    check_disk_space(cases * datamodule.num_predict * math.prod(model.sample_shape) * 4, directory,
                     f"predict would write {{size}} of samples ({what}{datamodule.num_predict} × "
                     f"{tuple(model.sample_shape)} float32)", "lower data.init_args.num_predict or free space",
                     RunError)  # fmt: skip


def _free_name(directory: Path, stem: str, suffix: str) -> str:
    """``stem + suffix``, or ``stem_K + suffix`` for the first K not taken in ``directory``."""
    name, k = stem + suffix, 1
    while (directory / name).exists():
        name, k = f"{stem}_{k}{suffix}", k + 1
    return name


def _places(trainer) -> list[Path]:
    """Where checkpoints of this configuration's runs lie: the callbacks' folders, the runs of the
    output directory, ``<default_root_dir>/checkpoints``."""
    places = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    logger = trainer.logger
    if logger is not None and getattr(logger, "root_dir", None):
        places.append(Path(logger.root_dir))
    return [*places, Path(trainer.default_root_dir) / "checkpoints"]


def _find_last(trainer, name: str = LAST, fits=None) -> str | None:
    found = find_last_checkpoint(_places(trainer), name, fits)
    return None if found is None else str(found)


def discard_unused_run() -> None:
    """Remove the run directory this process claimed if the run failed before writing anything of
    use (a checkpoint, samples, metrics, figures): a failed start leaves no empty ``version_N``."""
    global claimed
    if claimed is None or not claimed.is_dir():
        return
    useful = [p for p in claimed.rglob("*") if p.is_file() and (p.suffix in (".ckpt", ".npy", ".pt", ".png", ".partial")
              or p.name == "metrics.json")]  # fmt: skip
    if not useful:
        shutil.rmtree(claimed, ignore_errors=True)
    claimed = None
