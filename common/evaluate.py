"""`python -m common.evaluate GT_JSON RESULTS_JSON [--out FILE]`: COCO bbox metrics of a results file.

Prints the COCO summary table (and a per-class AP table with --per-class) and writes the numbers as JSON
to --out. Bad input exits with code 1 and a one-line reason on stderr.
"""
import argparse
import sys

from common.evaluation import BACKENDS, evaluate_coco, format_per_class, format_table, save_results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m common.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("gt", metavar="GT_JSON", help="COCO annotation json (ground truth)")
    parser.add_argument("results", metavar="RESULTS_JSON", help="COCO results json (list of detections)")
    parser.add_argument("--out", metavar="FILE", help="write the metrics here as JSON")
    parser.add_argument("--backend", choices=BACKENDS, default="faster")
    parser.add_argument("--max-dets", type=int, nargs="+", default=[1, 10, 100], metavar="N",
                        help="increasing detection caps (default: 1 10 100)")
    parser.add_argument("--per-class", action="store_true", help="also report AP per category")
    parser.add_argument("--verbose", action="store_true", help="show the COCO API's progress messages")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        metrics = evaluate_coco(args.gt, args.results, backend=args.backend, max_dets=args.max_dets,
                                per_class=args.per_class, verbose=args.verbose)
        print(format_table(metrics))
        if args.per_class:
            print()
            print(format_per_class(metrics["per_class"]))
        if args.out:
            save_results(metrics, args.out)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
