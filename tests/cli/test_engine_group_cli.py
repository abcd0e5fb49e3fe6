"""`engine=sglang engine.urls=[...]`: eval and solve run on SGLang servers (the stand-in: a stock
server's HTTP API over the local engine) with the same greedy results as the local engine; a wrong
engine field fails when the config loads, before any model or server is touched."""


import pytest

from apr.cli.common import compose
from apr.config import ConfigError
from tests.cli._assets import eval_assets
from tests.engine.sglang_standin import Standin


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    return eval_assets(tmp_path_factory.mktemp("engine_group"), tokenizer, 2)


def eval_overrides(root, ckpt, out):
    return [f"models.apr={ckpt}", f"data_dir={root / 'data'}", "num_problems=2", f"out_dir={out}",
            "eval.max_thread_tokens=48", "eval.windows=[48]", "eval.temperatures=[0.0]", "eval.cons_pass_n=0",
            "eval.progress=false", "plots=false"]


def test_eval_and_solve_on_sglang_match_the_local_engine(setup, tmp_path):
    from apr.cli.eval import run as run_eval
    from apr.cli.solve import parse_args
    from apr.cli.solve import run as run_solve

    root, ckpt = setup
    solve = ["--model", str(ckpt), "--numbers", "3", "5", "8", "--target", "39", "--max-thread-tokens", "48", "--json"]
    local = run_eval(compose("eval", eval_overrides(root, ckpt, tmp_path / "local")))
    local_tree = run_solve(parse_args(solve))
    with Standin(str(ckpt)) as server:
        sglang = ["engine=sglang", f"engine.urls=[{server.url}]", "engine.max_retries=1"]
        remote = run_eval(compose("eval", eval_overrides(root, ckpt, tmp_path / "sglang") + sglang))
        n = server.num_generate
        assert n > 0  # the servers decoded, not a local engine
        remote_tree = run_solve(parse_args(solve + sglang))
        assert server.num_generate > n
    a, b = local["models"]["apr"]["settings"]["t0"], remote["models"]["apr"]["settings"]["t0"]
    assert (a["accuracy"], a["mean_total_tokens"], a["mean_child_threads"]) == \
        (b["accuracy"], b["mean_total_tokens"], b["mean_child_threads"])
    assert remote_tree["tree"] == local_tree["tree"] and remote_tree["answer"] == local_tree["answer"]


def test_a_wrong_engine_field_fails_at_load(setup, tmp_path):
    from apr.cli.eval import run as run_eval
    from apr.cli.solve import engine_from_args, parse_args

    root, ckpt = setup
    c = compose("eval", eval_overrides(root, ckpt, tmp_path) + ["engine=sglang", "+engine.max_batch_size=8"])
    with pytest.raises(ConfigError, match=r"^engine.max_batch_size: unknown field; accepted: .*urls"):
        run_eval(c)
    assert not (tmp_path / "records_apr_t0.jsonl").exists() and not list(tmp_path.glob("*.json"))
    args = parse_args(["--model", str(ckpt), "--numbers", "3", "5", "--target", "8", "engine=vllm"])
    with pytest.raises(ConfigError, match="engine"):
        engine_from_args(args)
