"""The zoo's commands (``probekit models``, ``probekit train``, ``probekit experiment``), registered through the
``probekit_register_commands`` hook from the ``probekit.commands`` entry-point group: the core CLI knows nothing of
recipes. This module imports only argparse-level code; each command imports its work when it runs.
"""

from __future__ import annotations

from probekit.cli import check_report_target_of, print_store


def cmd_experiment(args) -> int:
    from probekit.zoo import experiments

    if args.report:
        check_report_target_of(args.out, args.overwrite)
    print_store(getattr(experiments, args.experiment.replace("-", "_"))(args), args.report)
    return 0


def cmd_models(args) -> int:
    from probekit.zoo.registry import ZOO

    for name, entry in sorted(ZOO.items()):
        missing = "" if entry.weights_path(name).is_file() else f"  [weights not bundled: probekit train {name}]"
        print(f"{name:20s} {entry.description} (data: {entry.data}){missing}")
    return 0


def cmd_train(args) -> int:
    from probekit.zoo.training import TrainOptions, train_recipe

    options = TrainOptions(branches=args.branches, seed=args.seed, data_root=args.data_root, epochs=args.epochs,
                           resume=args.resume, checkpoint_dir=args.checkpoint_dir, scheme=args.scheme,
                           iterations=args.iterations, max_lr=args.max_lr, init_from=args.init_from,
                           progress=not args.quiet)
    train_recipe(args.recipe, out=args.out, overwrite=args.overwrite, options=options)
    return 0


def _output_arguments(parser) -> None:
    """``--out``, ``--overwrite``, ``--report``, ``--quiet`` of an experiment."""
    parser.add_argument("--out", required=True, help="results store to create")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--report", action="store_true", help="also write the HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_experiment)


def probekit_register_commands(subparsers):  # called directly by probekit.commands (no pluggy: --help stays fast)
    sub = subparsers
    experiment = sub.add_parser("experiment", help="run a built-in experiment that trains its own models")
    experiments = experiment.add_subparsers(dest="experiment", required=True)
    sweep = experiments.add_parser("toy-sweep", help="the paper's toy experiments (section 4.1, Figs. 2-4)")
    sweep.add_argument("--task", default="toy1", help="toy1 or toy2")
    sweep.add_argument("--branches", default="2:30", help="branch counts M: 2:30 (inclusive) or 2,4,8")
    sweep.add_argument("--trials", type=int, default=1000, help="networks per M, each from its own random init")
    sweep.add_argument("--steps", type=int, default=5000, help="full-batch gradient-descent steps")
    sweep.add_argument("--lr", type=float, default=0.02, help="learning rate")
    sweep.add_argument("--init", default="uniform:1", help="uniform:A (w, b ~ U(-A, A)) or normal:S")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--dtype", default="float32", help="float32 or float64")
    sweep.add_argument("--record-dynamics", type=int, default=0, metavar="K",
                       help="store the training trajectories of the first K trials of each M")
    sweep.add_argument("--dynamics-every", type=int, default=25, metavar="N", help="record every N steps")
    sweep.add_argument("--out", required=True, help="results store to create")
    sweep.add_argument("--overwrite", action="store_true")
    sweep.add_argument("--report", action="store_true", help="also write the HTML report")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(func=cmd_experiment)

    count = experiments.add_parser("branch-count", help="active and silent branches against M on CIFAR-10 "
                                   "(Fig. 5 left): trains one branched-resnet18 per M")
    count.add_argument("--data-root", help="CIFAR-10 folder (e.g. ../shared/data/cifar10)")
    count.add_argument("--branches", default="2,4,8,16,32", help="branch counts M: 2,4,8 or 2:8")
    count.add_argument("--epochs", type=int, default=3, help="epochs per model (the reduced budget)")
    count.add_argument("--train-limit", type=int, default=10_000,
                       help="train on a fixed random subset of this many images (0: all 50,000)")
    count.add_argument("--probe-data", default="cifar10-sample", help="data the activity analysis probes")
    count.add_argument("--checkpoint-dir", default="runs/branch-count",
                       help="epoch checkpoints and models, one folder per M; a rerun resumes from them")
    count.add_argument("--seed", type=int, default=0)
    count.add_argument("--head-init", choices=("zero", "default"), default="zero",
                       help="each branch's last linear layer: zero (f = 0 at the start) or PyTorch's default init")
    count.add_argument("--scheme", choices=("clamped", "logits"), default="clamped",
                       help="loss: the paper's clamped scheme or plain logits")
    count.add_argument("--max-lr", type=float, default=0.02, help="peak of the one-cycle schedule")
    count.add_argument("--out", required=True, help="results store to create")
    count.add_argument("--overwrite", action="store_true")
    count.add_argument("--report", action="store_true", help="also write the HTML report")
    count.add_argument("--quiet", action="store_true", help="no progress bars")
    count.set_defaults(func=cmd_experiment)

    moe = experiments.add_parser("moe-synthetic", help="expert specialization on clustered synthetic data (Chen et "
                                 "al. 2022, setting 1): trains nonlinear and linear mixtures and a single CNN per seed")
    moe.add_argument("--seeds", type=int, default=3, help="independent runs (data, initialisation, routing noise)")
    moe.add_argument("--seed", type=int, default=0, help="the first seed")
    moe.add_argument("--steps", type=int, default=500, help="full-batch training steps per model")
    moe.add_argument("--train", type=int, default=16000, help="training samples per seed")
    moe.add_argument("--test", type=int, default=16000, help="test samples per seed")
    moe.add_argument("--permutations", type=int, default=999, help="cluster shufflings for the dispatch-entropy null")
    moe.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of the test samples")
    _output_arguments(moe)

    classes = experiments.add_parser("hessian-classes", help="exact branch-blocked Hessians against the class count "
                                     "(Dong et al. 2025): a one-hidden-layer network of 8 summed branches")
    classes.add_argument("--classes", default="10,100,500", help="class counts C, comma-separated")
    classes.add_argument("--seeds", type=int, default=1, help="independent runs (data, teacher, initialisation)")
    classes.add_argument("--seed", type=int, default=0, help="the first seed")
    classes.add_argument("--steps", type=int, default=300, help="full-batch Adam steps before the trained Hessian")
    classes.add_argument("--permutations", type=int, default=99, help="random blockings for the baseline")
    _output_arguments(classes)

    nad = experiments.add_parser("nad", help="NAD: learn each class's sub-architecture of a trained model "
                                 "(channel gates by forward hooks), and evaluate the masks")
    nad.add_argument("--model", required=True, help="model spec, as for probekit run")
    nad.add_argument("--data", required=True, help="training data with classes (e.g. cifar10:ROOT:train)")
    nad.add_argument("--test-data", required=True, help="test data with the same classes")
    nad.add_argument("--layers", help="modules to gate, comma-separated globs (default: the model's "
                     "probekit_nad_layers; the zoo ResNets name their stems and block outputs)")
    nad.add_argument("--branch-gates", action="store_true", help="also one scalar gate per branch output")
    nad.add_argument("--branches", help="name the branches by glob, as for probekit run")
    nad.add_argument("--beta", type=float, default=0.02, help="weight of the mask loss (0.02: the reference's "
                     "ResNet setting)")
    nad.add_argument("--lr", type=float, default=0.1, help="step of the normalised-gradient update")
    nad.add_argument("--epochs", type=int, default=1, help="passes over each class's images (the reference: 21)")
    nad.add_argument("--batch-size", type=int, default=64)
    nad.add_argument("--train-per-class", type=int, default=256, help="training images per class (random)")
    nad.add_argument("--test-per-class", type=int, default=100, help="test images per class (random)")
    nad.add_argument("--mosaics", type=int, default=100, help="2x2 mosaics for the CAM hit rate")
    nad.add_argument("--permutations", type=int, default=99, help="random masks of the same size per class for "
                     "the null (each a pass over the test images; 0: no test)")
    nad.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of the test images")
    nad.add_argument("--seed", type=int, default=0)
    nad.add_argument("--trust-pickle", action="store_true")
    nad.add_argument("--trust-code", action="store_true")
    nad.add_argument("--option", action="append", default=[], metavar="nad.KEY=VALUE",
                     help="the same settings in run's option form: nad.layers=GLOB, nad.branch_gates=true, "
                     "nad.beta=0.05, ... (repeatable; wins over the flags)")
    nad.add_argument("--checkpoint-dir", help="save each class's masks here as it is learnt; a rerun with the same "
                     "settings and folder resumes at the first class not yet saved")
    nad.add_argument("--out", required=True, help="results store to create")
    nad.add_argument("--overwrite", action="store_true")
    nad.add_argument("--report", action="store_true", help="also write the HTML report")
    nad.add_argument("--quiet", action="store_true", help="no progress bars")
    nad.set_defaults(func=cmd_experiment)

    models = sub.add_parser("models", help="list the bundled zoo models")
    models.set_defaults(func=cmd_models)

    train = sub.add_parser("train", help="train a bundled model from its recipe")
    train.add_argument("recipe", help="toy1, toy2, digits-branched8, digits-moe8, cifar10-branched16, "
                       "afhq-cat-branched9, celeba-branched9 or afhq-cat-diffusion9")
    train.add_argument("--out", help="weights file to write (default: the zoo's own file)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--branches", type=int, help="number of branches M (default: the recipe's)")
    train.add_argument("--overwrite", action="store_true")
    train.add_argument("--data-root", help="dataset folder: ../shared/data/cifar10 for cifar10-branched16, "
                       "../shared/data for the generators")
    train.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
    train.add_argument("--iterations", type=int, help="generator recipes: training iterations (default: the "
                       "recipe's)")
    train.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    train.add_argument("--scheme", choices=("clamped", "logits"),
                       help="cifar10-branched16 loss: the paper's clamped scheme (default) or plain logits")
    train.add_argument("--max-lr", type=float, help="cifar10-branched16: peak of the one-cycle schedule "
                       "(default 0.02)")
    train.add_argument("--init-from", metavar="WEIGHTS", help="cifar10-branched16: start from these weights (a "
                       "zoo-format file) instead of the recipe's init: a fine-tune")
    train.add_argument("--checkpoint-dir", help="where epoch checkpoints go (default: runs/<recipe>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
