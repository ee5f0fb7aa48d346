"""A 3-trial study whose trials each run on 2 CPU processes (strategy="ddp", gloo).

Run by tests/test_tuning_ddp.py as ``python tests/ddp_scripts/tuning_ddp.py OUT_DIR``. Lightning's
launcher re-runs this script for rank 1, which calls ``tune()`` again and follows rank 0's trials.
Every rank records what it built and each validation it ran in ``OUT_DIR/rank<r>.jsonl``; rank 0
writes the study's trials to ``OUT_DIR/study.json``; each rank writes ``OUT_DIR/done<r>.json`` last.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import optuna
import torch.distributed as dist
from tuning_models import TinyData, TinyNet

from lightning_optkit.tuning import tune

OUT = Path(sys.argv[1])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("LOCAL_RANK", 0))


def _record(**entry) -> None:
    with open(OUT / f"rank{_rank()}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report and no other trial: a deterministic PRUNED trial."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


class Net(TinyNet):
    def on_validation_epoch_end(self) -> None:  # runs before the callbacks' on_validation_end
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            _record(event="validation", step=int(self.trainer.global_step), world=self.trainer.world_size)


def build(optim: dict):
    _record(event="build", optim=optim, world=dist.get_world_size() if dist.is_initialized() else 1)
    return Net(optim), TinyData()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    study = tune(
        build,
        {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True},
         "optimizer.weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}},
        config={"optimizer": {"name": "adamw", "lr": 1e-2}},
        monitor="val_loss",
        n_trials=3,
        sampler="random",
        pruner=PruneTrialOne(),
        storage=f"sqlite:///{OUT / 'study.db'}",
        study_name="ddp",
        trainer_kwargs=dict(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", deterministic=True),
        out_dir=OUT / "out",
        plots=False,
        threads=1,
    )
    if _rank() == 0:
        trials = [{"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
                   "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
                   "config": t.user_attrs.get("optkit.config")} for t in study.trials]
        (OUT / "study.json").write_text(json.dumps(trials))
        (OUT / "reeval.json").write_text(json.dumps(study.user_attrs.get("optkit.reeval")))
    (OUT / f"done{_rank()}.json").write_text(json.dumps({"trials": len(study.trials), "name": study.study_name}))
