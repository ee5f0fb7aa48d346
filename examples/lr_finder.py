"""The LR finder three ways on the built-in digits example: find_lr, the LRFinder callback, and a re-test.

1. ``find_lr`` on the digits MLP (AdamW + warm-up/cosine from the preset config): prints every rule's
   suggestion and the peak LR to configure, and writes the plot to ``lr_finder.png``.
2. ``LRFinder`` as a callback: the test runs when ``fit`` starts, its recommendation is written into
   the model's ``optim`` config (see ``model.hparams["optim"]``) and the fit trains with it.
3. A frozen backbone unfrozen at epoch 3, with the test run again at that epoch (mid-training, from
   the current weights and optimizer state).

Run:  python examples/lr_finder.py
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_optkit.callbacks import LRFinder
from lightning_optkit.demo import make_example
from lightning_optkit.lr_finder import find_lr

QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def functional() -> None:
    L.seed_everything(0, verbose=False)
    model, data = make_example("digits")
    result = find_lr(model, datamodule=data, trainer_kwargs=dict(QUIET, max_epochs=10))
    print(result.summary())
    print(f"configure optimizer.lr = {result.recommended_lr:.3g}")
    result.plot().savefig("lr_finder.png", dpi=110)
    print("plot: lr_finder.png")


def callback() -> None:
    L.seed_everything(0, verbose=False)
    model, data = make_example("digits")
    finder = LRFinder(verbose=False)
    trainer = L.Trainer(max_epochs=5, callbacks=[finder], **QUIET)
    trainer.fit(model, datamodule=data)
    print(f"LRFinder wrote optimizer.lr = {model.hparams['optim']['optimizer']['lr']:.3g} "
          f"(steepest suggestion {finder.result.suggestion:.3g} x {finder.result.peak_factor:.2f} for the "
          f"{finder.result.schedule} schedule); val_loss after 5 epochs: {float(trainer.callback_metrics['val_loss']):.3f}")


class Unfreeze(Callback):
    """Trains only the head for the first 3 epochs, then the whole network."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.backbone.requires_grad_(False)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 3:
            pl_module.backbone.requires_grad_(True)


def retest_after_unfreezing() -> None:
    L.seed_everything(0, verbose=False)
    model, data = make_example("digits", overrides={"scheduler": None})  # a constant LR for this one
    finder = LRFinder(epochs=[0, 3], verbose=False)
    # Unfreeze runs first at each epoch start, so the test at epoch 3 sees the unfrozen backbone
    trainer = L.Trainer(max_epochs=6, callbacks=[Unfreeze(), finder], **QUIET)
    trainer.fit(model, datamodule=data)
    for epoch, result in finder.results.items():
        print(f"epoch {epoch}: suggestion {result.suggestion:.3g} -> optimizer.lr {result.recommended_lr:.3g}")


if __name__ == "__main__":
    functional()
    callback()
    retest_after_unfreezing()
