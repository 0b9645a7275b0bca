"""`python -m evals SUITE …`: the regression runner's command line; `qqrag eval` forwards its
arguments here (`main(args, prog="qqrag eval")`), so both accept the same options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from evals.metrics import METRICS, Tolerance
from evals.outcome import DEFAULT_CHAT_MODEL, DEFAULT_CONCURRENCY, EvalOptions
from evals.runner import run_eval
from evals.suite import available_suites


def parser(prog: str = "python -m evals") -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog=prog,
        description="回归评测：在进程内把评测套件跑过问答图，逐节点计分，并与基线比较。",
    )
    parse.add_argument("suite", help=f"套件名（{'、'.join(available_suites())}）或套件 .yaml 路径")
    parse.add_argument(
        "--profile", default="default", metavar="NAME", help="灰度档案名（默认 default）"
    )
    parse.add_argument(
        "--profiles", type=Path, metavar="FILE", help="档案文件，默认 QQRAG_PROFILES_PATH"
    )
    parse.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="基线文件，默认 evals/baselines/套件.档案.json",
    )
    parse.add_argument("--update-baseline", action="store_true", help="用本次结果写入基线")
    parse.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="比较两个档案：B 相对 A 是否更好"
    )
    parse.add_argument("--sample", type=int, metavar="N", help="只跑均匀抽取的 N 个用例")
    parse.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N", help="并发用例数"
    )
    parse.add_argument(
        "--ollama-url", metavar="URL", help="Ollama 地址（不给则在进程内启动假 Ollama）"
    )
    parse.add_argument(
        "--chat-model", default=DEFAULT_CHAT_MODEL, metavar="M", help="回答与分类模型"
    )
    parse.add_argument(
        "--embed-model", default="", metavar="M", help="向量模型：混合检索与 embedding 重排"
    )
    parse.add_argument("--rerank-model", default="", metavar="M", help="Qwen3-Reranker 模型")
    parse.add_argument("--judge-model", metavar="M", help="评审模型：忠实度与相关性（不给则跳过）")
    parse.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="指标=容差",
        help="覆盖容差，可重复，如 answer.f1=0.02 或 cost.tokens=10%%",
    )
    parse.add_argument("--out", type=Path, metavar="DIR", help="报告目录，默认 evals/reports/")
    parse.add_argument("--no-progress", action="store_true", help="不显示进度条")
    parse.add_argument(
        "--allow-failing",
        action="store_true",
        help="没有基线可比时，有用例未通过也不算失败（默认退出码为 1）；有基线时由通过率的容差决定",
    )
    return parse


def options_from_args(
    argv: Sequence[str] | None = None, prog: str = "python -m evals"
) -> EvalOptions:
    parse = parser(prog)
    args = parse.parse_args(argv)
    tolerances = {}
    for item in args.tolerance:
        key, _, value = item.partition("=")
        if key not in METRICS:
            parse.error(f"--tolerance：没有指标 {key!r}；可用：{'、'.join(METRICS)}")
        try:
            tolerances[key] = Tolerance.parse(value)
        except ValueError as error:
            parse.error(f"--tolerance {item}：{error}")
    return EvalOptions(
        suite=args.suite,
        profile=args.profile,
        profiles_path=args.profiles,
        baseline=args.baseline,
        update_baseline=args.update_baseline,
        compare=(args.compare[0], args.compare[1]) if args.compare else None,
        sample=args.sample,
        concurrency=args.concurrency,
        ollama_url=args.ollama_url,
        chat_model=args.chat_model,
        embed_model=args.embed_model,
        rerank_model=args.rerank_model,
        judge_model=args.judge_model,
        tolerances=tolerances,
        out=args.out,
        progress=not args.no_progress,
        allow_failing=args.allow_failing,
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m evals") -> int:
    """Parse, run, report; the exit status (0 fine, 1 regression or failing cases, 2 unusable
    input, 3 the model could not be reached)."""
    return run_eval(options_from_args(argv, prog))


if __name__ == "__main__":
    sys.exit(main())
