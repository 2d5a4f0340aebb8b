"""python -m export onnx | parity  (see export/onnx.py and export/parity.py)."""

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_PARITY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _batch_sizes(text: str):
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,7,64, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from lenet_triton.datasets import FILE_DATASETS
    from lenet_triton.model import BACKENDS

    from .onnx import DEFAULT_OPSET
    from .parity import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, DEFAULT_RTOL, PROVIDERS

    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("onnx", help="export a LeNet checkpoint to ONNX (standard ops only)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export.add_argument("--checkpoint", type=Path, required=True, help="a plain LeNet / tutorial Net state_dict")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    export.add_argument("--in-channels", type=int, default=None,
                        help="the model's input channels (1: digits and MNIST, 3: CIFAR-10); default: the checkpoint's")
    parity = commands.add_parser("parity", help="prove an ONNX file matches its checkpoint, with onnxruntime",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parity.add_argument("onnx_file", type=Path, metavar="PATH")
    parity.add_argument("--checkpoint", type=Path, required=True)
    parity.add_argument("--batch-sizes", type=_batch_sizes, default=DEFAULT_BATCH_SIZES,
                        help="comma-separated batch sizes of random images")
    parity.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="float32 absolute tolerance on logits")
    parity.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="float32 relative tolerance on logits")
    parity.add_argument("--seed", type=int, default=0, help="seed of the random images")
    parity.add_argument("--backend", choices=BACKENDS, default="triton",
                        help="the LeNet backend whose outputs the file is compared with")
    parity.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                        help="onnxruntime's execution provider: cpu, or cuda where onnxruntime has it")
    parity.add_argument("--report", type=Path, default=None, help="also write the results as JSON here")
    parity.add_argument("--dataset", choices=FILE_DATASETS, default=None,
                        help="also compare on this data set's test images, read from --data-dir")
    parity.add_argument("--data-dir", type=Path, default=None, help="where --dataset's files are")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    from .onnx import ExportError, export_checkpoint
    from .parity import ParityInputError, format_table, run_parity, write_report

    try:
        if args.command == "onnx":
            proto = export_checkpoint(args.checkpoint, args.out, opset=args.opset, in_channels=args.in_channels)
            ops = sorted({node.op_type for node in proto.graph.node})
            print(f"wrote {args.out} (opset {args.opset}, {args.out.stat().st_size} bytes, ops: {', '.join(ops)})")
            return EXIT_OK
        report = run_parity(args.onnx_file, args.checkpoint, batch_sizes=args.batch_sizes, atol=args.atol,
                            rtol=args.rtol, seed=args.seed, backend=args.backend, provider=args.provider,
                            dataset=args.dataset, data_dir=args.data_dir)
    except (ExportError, ParityInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_table(report))
    if args.report is not None:
        write_report(report, args.report)
        print(f"report: {args.report}")
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


if __name__ == "__main__":
    sys.exit(main())
