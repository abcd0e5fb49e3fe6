"""Generate Countdown problems and SoS+/APR traces for train/val/test, with statistics.

    python -m apr.cli.data task=countdown_n4 data.num_train=10000 data.num_test=500
    # ~N=4: a few hundred problems/s per core for both solvers; writes data/<task>/{train,val,test}/
    # {problems,sosp,apr}.jsonl, data/<task>/tokenizer/, data/<task>/stats.{json,md}
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra

from apr.cli.common import check_writable_dir, config_dir, run_clean, to_container
from apr.config import ConfigError


def configs(c: dict) -> tuple:
    """(task, {name: solver}, data, tokenizer) configs from the composed config, every field checked."""
    from apr.config import from_dict
    from apr.datagen import DataConfig
    from apr.search import SearchConfig
    from apr.task import CountdownConfig
    from apr.tokenizer import TokenizerConfig

    task = from_dict(CountdownConfig, c["task"], "task")
    solvers = {name: from_dict(SearchConfig, s, f"solvers.{name}") for name, s in c["solvers"].items()}
    return task, solvers, from_dict(DataConfig, c["data"], "data"), from_dict(TokenizerConfig, c["tokenizer"], "tokenizer")


# what marks a directory as holding a data set (apr.datagen.generate_dataset writes them)
DATA_FILES = ("stats.json", "train", "val", "test", "tokenizer")


def preflight(c: dict) -> None:
    """What can refuse the run, checked before Hydra writes into data.out_dir (`apr.cli.common.Preflight`)."""
    from apr.datagen.build import check_generation

    task, _, data, _ = configs(c)
    check_writable_dir(data.out_dir, "data.out_dir")
    check_generation(task, data)
    overwrite = c.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite: got {overwrite!r}; accepted: true or false")
    out = Path(data.out_dir)
    held = [name for name in DATA_FILES if (out / name).exists()]
    complete = (out / "stats.json").is_file()  # written last: without it, an interrupted generation
    if complete and not overwrite:
        raise ConfigError(f"data.out_dir: {str(out)!r} already holds a data set ({', '.join(held)}); accepted: "
                          "another data.out_dir, or overwrite=true to move it aside and write a new one")
    if held:  # last: nothing is moved before every check has passed; an unfinished set is moved aside too
        aside = out.with_name(out.name + ".replaced")
        n = 1
        while aside.exists():
            n += 1
            aside = out.with_name(f"{out.name}.replaced{n}")
        os.replace(out, aside)
        why = "overwrite=true" if complete else "an unfinished data set (no stats.json)"
        print(f"{why}: moved the earlier {out} to {aside} (delete it to free the space)")



def run(c: dict) -> dict:
    from apr.datagen import generate_dataset
    from apr.datagen.stats import to_markdown

    task, solvers, data, tok = configs(c)
    stats = generate_dataset(task, solvers, data, tok)
    print(to_markdown(stats))
    print(f"wrote {data.out_dir}")
    return stats


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="data")
def main(cfg) -> None:
    run_clean(lambda: run(to_container(cfg)))


if __name__ == "__main__":
    main()
