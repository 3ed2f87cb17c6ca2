"""The cases of the bad-input battery (``test_bad_inputs.py``): what a new user gets wrong."""

CKPT = "{run}/lightning_logs/version_0/checkpoints/last.ckpt"
SPATIAL_2D = "{root}/configs/spatial_2d.yaml"
# Conditional predict with the exact model: only the observations file is wrong in these cases
OBSERVE = ["predict", "--model.denoiser=ExactDenoiser", "--model.conditioning=ReconstructionGuidance",
           "--data.init_args.num_predict=4"]  # fmt: skip
# Training on an array file: only the file is wrong in these cases
ARRAYS = ["fit", "--data=ArrayDataModule", "--data.init_args.frames=8"]
# A reference fitted at station coordinates: only the coordinates are wrong in these cases
STATIONS = [*ARRAYS, "--data.init_args.paths={run}/arrays_good.npy", "--data.init_args.reference=kernels"]

# (case, arguments after `stdiff`, text that must appear in the first lines of stderr)
CASES = [
    (
        "wrong type: int",
        ["fit", "--data.init_args.frames=abc"],
        "data.init_args.frames: expected an integer, got 'abc'",
    ),
    (
        "wrong type: float for int",
        ["fit", "--data.init_args.batch_size=1.5"],
        "data.init_args.batch_size: expected an integer, got 1.5",
    ),
    (
        "wrong type: trainer",
        ["fit", "--trainer.max_steps=abc"],
        "trainer.max_steps: expected an integer, got 'abc'",
    ),
    ("negative size", ["fit", "--data.init_args.batch_size=-4"], "batch_size must be an integer >= 1, got -4"),
    ("zero size", ["fit", "--data.init_args.num_val=0"], "num_val must be an integer >= 1, got 0"),
    ("too few frames", ["fit", "--data.init_args.frames=1"], "frames must be an integer >= 2, got 1"),
    (
        "empty grid",
        ["fit", "--data.init_args.space_shape=[0]"],
        "space_shape entry (in (0,)) must be an integer >= 1, got 0",
    ),
    ("negative seed", ["fit", "--data.init_args.seed=-1"], "seed must be an integer >= 0, got -1"),
    (
        "space not divisible by patch",
        ["fit", "--model.denoiser.init_args.backbone.init_args.patch_size=3"],
        "patch_size 3 must be a positive divisor of the spatial size 8",
    ),
    (
        "2-D grid not divisible by patch",
        ["fit", "--config", SPATIAL_2D, "--model.denoiser.init_args.backbone.init_args.patch_size=[5,5]"],
        "patch_size 5 must be a positive divisor of the spatial size 16",
    ),
    (
        "heads do not divide width",
        ["fit", "--model.denoiser.init_args.backbone.init_args.heads=5"],
        "heads must be >= 1 and divide width=64, got heads=5",
    ),
    (
        "width not divisible by 4",
        ["fit", "--model.denoiser.init_args.backbone.init_args.width=30"],
        "width must be divisible by 4 (sinusoidal positions), got 30",
    ),
    (
        "zero depth",
        ["fit", "--model.denoiser.init_args.backbone.init_args.depth=0"],
        "depth must be an integer >= 1, got 0",
    ),
    (
        "unknown kernel",
        ["fit", "--data.init_args.temporal=PoweredExp"],
        "unknown kernel 'PoweredExp'. Did you mean 'PoweredExponential'?",
    ),
    (
        "unknown schedule",
        ["fit", "--model.denoiser.init_args.schedule=Cosin"],
        "unknown schedule 'Cosin'. Did you mean 'Cosine'?",
    ),
    ("unknown sampler", ["fit", "--model.sampler=Hune"], "unknown sampler 'Hune'. Did you mean 'Heun'?"),
    (
        "unknown attention",
        ["fit", "--model.denoiser.init_args.backbone.init_args.attention=Factorised"],
        "unknown attention 'Factorised'. Did you mean 'FactorizedAttention'?",
    ),
    (
        "unknown data module",
        ["fit", "--data=GPDataModul"],
        "unknown data module 'GPDataModul'. Did you mean 'GPDataModule'?",
    ),
    (
        "misspelt option",
        ["fit", "--trainer.max_stesp=10"],
        "trainer.max_stesp: Trainer has no parameter 'max_stesp'. Did you mean 'max_steps'?",
    ),
    (
        "option the class lacks",
        ["fit", "--data.init_args.temporal.init_args.nu=1"],
        "data.init_args.temporal.init_args.nu: PoweredExponential has no parameter 'nu'. Its parameters: lengthscale, power",
    ),
    (
        "misspelt key in a YAML file",
        ["fit", "--config", "{run}/unknown_key.yaml"],
        "data.init_args.frame: GPDataModule has no parameter 'frame'. Did you mean 'frames'?",
    ),
    (
        "YAML syntax error",
        ["fit", "--config", "{run}/broken.yaml"],
        "config file {run}/broken.yaml: invalid YAML (line 4, column 1): expected ',' or ']'",
    ),
    ("missing config file", ["fit", "--config", "{run}/nope.yaml"], "config file {run}/nope.yaml does not exist"),
    (
        "literal not allowed",
        ["fit", "--model.denoiser.init_args.parameterization=velocity"],
        "model.denoiser.init_args.parameterization: 'velocity' is not one of 'eps', 'x0', 'v', 'score'",
    ),
    (
        "kernel parameter out of range",
        ["fit", "--data.init_args.temporal.init_args.power=3"],
        "PoweredExponential.power must lie in (0.0, 2.0], got 3.0",
    ),
    (
        "zero lengthscale",
        ["fit", "--data.init_args.temporal.init_args.lengthscale=0"],
        "PoweredExponential.lengthscale must be a finite number > 0",
    ),
    (
        "kernel not positive definite",
        ["fit", "--data.init_args.spatial.init_args.lengthscale=40"],
        "spatial kernel RBF(lengthscale=40.0) is not positive definite",
    ),
    (
        "negative jitter",
        ["fit", "--data.init_args.jitter=-1"],
        "jitter must be a finite number >= 0 or 'auto', got -1.0",
    ),
    (
        "sampler with no steps",
        ["fit", "--model.sampler.init_args.steps=0"],
        "UniPC.steps must be an integer >= 1, got 0",
    ),
    (
        "t_min above t_max",
        ["fit", "--model.denoiser.init_args.schedule.init_args.t_min=20"],
        "OrnsteinUhlenbeck.t_max must be > t_min=20.0, got 10.0",
    ),
    ("negative learning rate", ["fit", "--model.optimizer.init_args.lr=-1"], "Invalid learning rate: -1.0"),
    (
        "negative checkpoint interval",
        ["fit", "--checkpoint.every_n_train_steps=-1"],
        "Invalid value for every_n_train_steps=-1",
    ),
    (
        "unknown non-finite policy",
        ["fit", "--nonfinite.policy=ignore"],
        "nonfinite.policy: 'ignore' is not one of 'stop', 'skip', 'off'",
    ),
    (
        "unknown precision",
        ["fit", "--trainer.precision=bf15"],
        "trainer.precision: 'bf15' is not accepted. Did you mean 'bf16'?",
    ),
    (
        "GPU requested, none present",
        ["fit", "--trainer.accelerator=gpu"],
        "invalid configuration: No supported gpu backend found!",
    ),
    (
        "zero devices",
        ["fit", "--trainer.devices=0"],
        "`Trainer(devices='0')` value is not a valid input using cpu accelerator",
    ),
    (
        "training the exact model",
        ["fit", "--model.denoiser=ExactDenoiser"],
        "model.denoiser=ExactDenoiser has nothing to train",
    ),
    ("missing checkpoint", ["fit", "--ckpt_path={run}/nope.ckpt"], "checkpoint '{run}/nope.ckpt' does not exist"),
    ("checkpoint is a directory", ["validate", "--ckpt_path={run}"], "checkpoint '{run}' is not a file"),
    (
        "corrupt checkpoint",
        ["fit", "--ckpt_path={run}/corrupt.ckpt"],
        "checkpoint '{run}/corrupt.ckpt' is corrupt or not a PyTorch checkpoint",
    ),
    (
        "truncated checkpoint",
        ["test", "--ckpt_path={run}/truncated.ckpt"],
        "checkpoint '{run}/truncated.ckpt' is corrupt or not a PyTorch checkpoint",
    ),
    (
        "checkpoint with pickled code",
        ["fit", "--ckpt_path={run}/pickled_code.ckpt"],
        "contains pickled objects other than tensors and plain data, and is not loaded",
    ),
    (
        "checkpoint of another model",
        ["fit", f"--ckpt_path={CKPT}", "--model.denoiser.init_args.backbone.init_args.width=32"],
        "was trained with another model configuration: 39 parameter(s) do not fit, e.g. denoiser.backbone.embed.weight: (64, 8) in the checkpoint, (32, 8) in this model",
    ),
    (
        "data/model shape mismatch",
        ["predict", f"--ckpt_path={CKPT}", "--data.init_args.frames=16"],
        "the checkpoint was trained on samples of shape (32, 8) (T, *space_shape), but the data gives (16, 8)",
    ),
    (
        "unwritable output directory",
        ["fit", "--trainer.default_root_dir={run}/a_file/sub"],
        "output directory '{run}/a_file/sub/lightning_logs' cannot be created: '{run}/a_file' is a file",
    ),
    (
        "predict without samples requested",
        ["predict", "--model.denoiser=ExactDenoiser", "--data.init_args.num_predict=0"],
        "predict needs a number of samples: set data.init_args.num_predict",
    ),
    ("predict without a model", ["predict"], "predict needs a trained model: pass --ckpt_path"),
    # The configuration walked against the classes it names (stdiff.config_check)
    (
        "full class_path to a missing module",
        ["fit", "--data.init_args.temporal=nopkg.MyKernel"],
        "data.init_args.temporal: cannot import 'nopkg.MyKernel': no module named 'nopkg'",
    ),
    (
        "class of the wrong base",
        ["fit", "--data.init_args.temporal=torch.nn.Linear"],
        "data.init_args.temporal: torch.nn.Linear is not a subclass of Kernel, so not a kernel",
    ),
    (
        "unknown noise model",
        ["validate", "--model.denoiser=Exact"],
        "unknown noise model 'Exact'. Did you mean 'ExactDenoiser'?",
    ),
    (
        "NaN learning rate",
        ["fit", "--model.optimizer.init_args.lr=nan"],
        "model.optimizer.init_args.lr: expected a number, got 'nan'",
    ),
    ("empty config file", ["fit", "--config", "{run}/empty.yaml"], "config file {run}/empty.yaml is empty"),
    (
        "tab-indented YAML",
        ["fit", "--config", "{run}/tabs.yaml"],
        "config file {run}/tabs.yaml: invalid YAML (line 2, column 1)",
    ),
    (
        "list-valued YAML",
        ["fit", "--config", "{run}/list.yaml"],
        "config file {run}/list.yaml must hold a mapping of keys (model:, data:, trainer:, ...), got a list",
    ),
    ("binary config file", ["fit", "--config", "{run}/binary.yaml"], "config file {run}/binary.yaml: not a text file"),
    (
        "exact model on data without a truth",
        ["validate", "--model.denoiser=ExactDenoiser", "--data=stdiff.data.MovingBall"],
        "model.denoiser=ExactDenoiser needs data whose exact distribution is known",
    ),
    # Round two (issue L): sizes estimated first, checkpoints that contradict the config, fresh models
    (
        "too many frames for memory",
        ["fit", "--data.init_args.frames=100000"],
        "GPDataModule(frames=100000, space_shape=(8,), batch_size=64) needs about",
    ),
    (
        "batch too large for memory",
        ["fit", "--data.init_args.batch_size=100000000"],
        "a batch: 286 GiB), more than half of the",
    ),
    (
        "validate --ckpt_path last without a checkpoint",
        ["validate", "--ckpt_path=last", "--trainer.default_root_dir={run}/no_runs_here"],
        "validate needs a trained model: --ckpt_path last found no checkpoint",
    ),
    ("test without a checkpoint", ["test"], "test needs a trained model: pass --ckpt_path"),
    (
        "checkpoint trained with another parameterization",
        ["predict", f"--ckpt_path={CKPT}", "--model.denoiser.init_args.parameterization=eps"],
        "denoiser.init_args.parameterization: v in the checkpoint, eps now",
    ),
    (
        "checkpoint trained under another schedule",
        ["validate", f"--ckpt_path={CKPT}", "--model.denoiser.init_args.schedule=LinearBeta"],
        "that change what its weights mean: denoiser.init_args.schedule.class_path",
    ),
    (
        "jitter auto on an indefinite kernel",
        [
            "fit",
            "--data.init_args.frames=3",
            "--data.init_args.temporal=Tabulated",
            "--data.init_args.jitter=auto",
            "--data.init_args.temporal.init_args.values=[[1,0.9,-0.5],[0.9,1,0.9],[-0.5,0.9,1]]",
        ],
        "smallest eigenvalue -0.547 (largest 2.05); jitter: auto repairs round-off only",
    ),
    # Round three (issue P): every file checked at the door, the disk before predict, the right culprit
    (
        "observations with inf",
        [*OBSERVE, "--data.init_args.observed={run}/obs_inf.npy"],
        "data.init_args.observed: {run}/obs_inf.npy: entry [1, 3, 2] is infinite. Only finite values are data",
    ),
    (
        "observations with an absurd value",
        [*OBSERVE, "--data.init_args.observed={run}/obs_huge.npy"],
        "data.init_args.observed: {run}/obs_huge.npy: entry [0, 5, 7] is 1e+30: beyond 1.8e+19",
    ),
    (
        "observations as strings",
        [*OBSERVE, "--data.init_args.observed={run}/obs_strings.npy"],
        "data.init_args.observed: {run}/obs_strings.npy: holds <U3 values; expected numbers",
    ),
    (
        "observations: a text file named .npy",
        [*OBSERVE, "--data.init_args.observed={run}/text.npy"],
        "data.init_args.observed: {run}/text.npy: not a .npy file",
    ),
    (
        "observations: truncated .npy",
        [*OBSERVE, "--data.init_args.observed={run}/obs_truncated.npy"],
        "data.init_args.observed: {run}/obs_truncated.npy: truncated",
    ),
    (
        "observations of the wrong shape",
        [*OBSERVE, "--data.init_args.observed={run}/obs_shape.npy"],
        "data.init_args.observed: {run}/obs_shape.npy holds an array of shape (2, 16, 8); expected (n, 32, 8)",
    ),
    (
        "observations all missing",
        [*OBSERVE, "--data.init_args.observed={run}/obs_all_nan.npy"],
        "nothing is observed in sample(s) [0, 1]",
    ),
    (
        "observations with nothing missing",
        [*OBSERVE, "--data.init_args.observed={run}/obs_complete.npy"],
        "every coordinate is observed in sample(s) [0, 1]",
    ),
    (
        "observations file missing",
        [*OBSERVE, "--data.init_args.observed={run}/nope.npy"],
        "data.init_args.observed: {run}/nope.npy: no such file",
    ),
    (
        "observations: a symlink loop",
        [*OBSERVE, "--data.init_args.observed={run}/loop.npy"],
        "data.init_args.observed: {run}/loop.npy: a symbolic link loop",
    ),
    (
        "observations for an unconditional model",
        ["predict", f"--ckpt_path={CKPT}", "--data.init_args.num_predict=4", "--data.init_args.observed={run}/obs_good.npy"],
        "asks for conditional samples, but this model is unconditional",
    ),
    (
        "predict larger than the disk",
        ["predict", "--model.denoiser=ExactDenoiser", "--data.init_args.num_predict=100000000000"],
        "predict would write 93.1 TiB of samples (100000000000 × (32, 8) float32) to",
    ),
    (
        "array file with inf",
        [*ARRAYS, "--data.init_args.paths={run}/arrays_inf.npy"],
        "{run}/arrays_inf.npy: entry [2, 40, 3] is infinite",
    ),
    (
        "array file with an absurd value",
        [*ARRAYS, "--data.init_args.paths={run}/arrays_huge.npy"],
        "{run}/arrays_huge.npy: entry [0, 90, 1] is -1e+30: beyond 1.8e+19",
    ),
    ("corrupt array file", [*ARRAYS, "--data.init_args.paths={run}/random.npy"], "{run}/random.npy: not a .npy file"),
    (
        "truncated array file",
        [*ARRAYS, "--data.init_args.paths={run}/arrays_truncated.npy"],
        "{run}/arrays_truncated.npy: truncated: its header promises (4, 100, 8) float32 values",
    ),
    ("array file: a text file named .npy", [*ARRAYS, "--data.init_args.paths={run}/text.npy"], "{run}/text.npy: not a .npy file"),
    ("array file: a symlink loop", [*ARRAYS, "--data.init_args.paths={run}/loop.npy"], "{run}/loop.npy: a symbolic link loop"),
    (
        "array file: a dangling link",
        [*ARRAYS, "--data.init_args.paths={run}/dangling.npy"],
        "{run}/dangling.npy: a symbolic link to",
    ),
    (
        "constant array data with a kernel reference",
        [*ARRAYS, "--data.init_args.paths={run}/arrays_constant.npy", "--data.init_args.reference=kernels"],
        "{run}/arrays_constant.npy: every observed training value is 3: constant data",
    ),
    (
        "array file with zero series",
        [*ARRAYS, "--data.init_args.paths={run}/arrays_empty.npy"],
        "{run}/arrays_empty.npy: holds no data: its shape (0, 100, 8)",
    ),
    (
        "seed out of range",
        ["fit", "--seed_everything=5000000000"],
        "seed_everything: 5000000000 is not a seed: an integer from 0 to 4294967295",
    ),
    ("ckpt_path best without a best checkpoint", ["test", "--ckpt_path=best"], "--ckpt_path best: no best.ckpt under"),
    (
        "misspelt top-level key",
        ["fit", "--config", "{run}/trainr.yaml"],
        "trainr: unknown top-level key. Did you mean 'trainer'? (from config file {run}/trainr.yaml)",
    ),
    # Round four (issue W): duplicate keys, degenerate coordinates, step counts, late or vague messages
    (
        "YAML key given twice",
        ["fit", "--config", "{run}/twice.yaml"],
        "config file {run}/twice.yaml: key 'data.init_args.batch_size' is given twice (lines 3 and 5)",
    ),
    (
        "YAML top-level block given twice",
        ["fit", "--config", "{run}/two_trainers.yaml"],
        "config file {run}/two_trainers.yaml: key 'trainer' is given twice (lines 1 and 4)",
    ),
    (
        "inline YAML with a key twice",
        ["fit", "--data.init_args={{batch_size: 8, batch_size: 16}}"],
        "--data.init_args: key 'batch_size' is given twice in its value",
    ),
    ("empty --config", ["fit", "--config", ""], "--config was given an empty path: give a YAML file"),
    (
        "device as config file",
        ["fit", "--config", "/dev/null"],
        "config file /dev/null is not a regular file (a device, FIFO or socket)",
    ),
    (
        "FIFO as config file",
        ["fit", "--config", "{run}/fifo.yaml"],
        "config file {run}/fifo.yaml is not a regular file (a device, FIFO or socket)",
    ),
    (
        "path not valid UTF-8",
        ["test", "--ckpt_path={run}/mod\udcffel.ckpt"],
        "--ckpt_path: '{run}/mod\\xffel.ckpt' is not valid UTF-8 (byte 0xff at position",
    ),
    (
        "output directory under /proc",
        ["fit", "--trainer.default_root_dir=/proc/stdiff/out"],
        "output directory '/proc/stdiff/out/lightning_logs' cannot be created: no directory can be made in '/proc'",
    ),
    (
        "forecast context not below the frames",
        ["test", "--model.denoiser=ExactDenoiser", "--data.init_args.task=Forecast", "--data.init_args.task.context=32"],
        "data.init_args.task: Forecast.context=32 must be below the number of frames T=32",
    ),
    (
        "training mask context not below the frames",
        ["fit", "--config", "{root}/configs/conditional/trained.yaml", "--data.init_args.frames=16"],
        "model.mask: Forecast.context=16 must be below the number of frames T=16",
    ),
    (
        "two stations at one place",
        [*STATIONS, "--data.init_args.coordinates={run}/coords_twice.csv"],
        "coordinates: {run}/coords_twice.csv: 2 of the 8 points share a place with another (counting rows from 0: rows [2, 5]",
    ),
    (
        "every station at one place",
        [*STATIONS, "--data.init_args.coordinates={run}/coords_one.csv"],
        "8 of the 8 points share a place with another (counting rows from 0: rows [0, 1, 2, 3, 4, 5]",
    ),
    (
        "coordinates of absurd magnitude",
        [*STATIONS, "--data.init_args.coordinates={run}/coords_huge.csv"],
        "coordinates: {run}/coords_huge.csv: row 3, column 0 is 1e+200: beyond ±1e+100",
    ),
    (
        "likelihood steps beyond any use",
        ["test", f"--ckpt_path={CKPT}", "--likelihood.steps=1000000000"],
        "likelihood.steps=1000000000 is more than any use needs (at most 100000",
    ),
    (
        "sampler steps beyond any use",
        ["predict", f"--ckpt_path={CKPT}", "--data.init_args.num_predict=8", "--model.sampler.init_args.steps=1000000000"],
        "model.sampler.init_args.steps=1000000000 is more than any use needs (at most 100000",
    ),
    (
        "diagnostic samples beyond memory",
        ["validate", "--model.denoiser=ExactDenoiser", "--diagnostics.num_samples=100000000"],
        "diagnostics.num_samples=100000000 of samples (32, 8) needs about 2.98 TiB of memory",
    ),
    (
        "test set beyond memory",
        ["test", "--model.denoiser=ExactDenoiser", "--data.init_args.num_val=1000000000"],
        "holding the fixed sets of samples (32, 8) needs about 2.79 TiB of memory (test set",
    ),
    (
        "training set beyond memory",
        ["fit", "--data.init_args.num_train=1000000000"],
        "(training set (data.init_args.num_train=1000000000): 2.79 TiB",
    ),
    (
        "conditional cases beyond memory",
        ["test", "--config", "{root}/configs/conditional/guidance.yaml", "--model.denoiser=ExactDenoiser",
         "--diagnostics.conditional_cases=100000000"],
        "diagnostics.conditional_cases=100000000 × conditional_samples=64 of samples (32, 8) needs about 125 TiB",
    ),
]
