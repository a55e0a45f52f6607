"""TrainConfig: the typed config of `dlrrec train` (section `train:`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlrrec.config import ConfigError

MODALITIES = ("text", "image")


@dataclass
class TrainConfig:
    """The DLRM, its projection towers, the losses and the loop.

    Args:
        run_dir: run root; reads `features/` and `similarity/`, writes `train/`.
        seed: seeds parameters, shuffling and positive sampling.
        epochs: maximum epochs.
        batch_size: GLOBAL batch size, split evenly over ranks.
        data_lanes: row streams each global batch is cut into (trainer/data.py
            `train_batches`): the unit of the data order that makes N ranks see 1 rank's
            batches. The world size must divide it and it must divide batch_size; 8 serves
            1, 2, 4 or 8 ranks, 64 up to 64. It is part of the data order, so changing it
            changes the batches (and the fingerprint).
        embedding_dim: D, the dim of every embedding table and projection tower output.
        tower_hidden: hidden width of each 384->D projection tower (0 = one linear layer).
        tower_dim: output dim of the projection towers (0 = embedding_dim). Below
            embedding_dim, a learned per-tower linear tower_dim -> D map lifts the tower
            outputs into the interaction; InfoNCE reads the narrow outputs (serving folds the map).
        dense_arch: hidden sizes of the MLP over dense features (its output is D).
        over_arch: hidden sizes of the MLP after the interaction (a final 1 is added).
        dropout: dropout in towers and over arch.
        lr: dense Adam learning rate (the paper's 0.01).
        sparse_optimizer: optimizer fused into the embedding tables (fbgemm). `auto` =
            exact row-wise Adagrad on CPU and CUDA alike; `adam` exists only on CUDA.
        sparse_lr: learning rate of the fused sparse optimizer.
        sparse_weight_decay: weight decay of the fused sparse optimizer, CUDA only: L2
            (added to the gradient) with rowwise_adagrad, decoupled (AdamW) with adam.
            fbgemm's CPU kernels ignore it and adagrad/sgd have none: > 0 is refused there.
        history_tables: the history bags' embedding tables (features.history_bags):
            `own` (one table per bag) or `shared` (each bag pooled from the table of the
            id feature whose ids it lists, `_meta.json` `ids_of`), or `none` (no table:
            the bags reach the model only through `history_content`).
        history_content: history bags also read as content: a row's bag becomes the mean
            of its members' content vectors, projected by the members' own tower (a user's
            item bag by the item tower, which item-item InfoNCE shapes), one more vector
            in the interaction. So a user without training rows (the temporal split's
            cold users) still meets the SWING-refined item space through their causal
            history. Variants without towers ignore it.
        lr_decay: per-epoch decay of both learning rates: epoch e (from 0) trains at
            lr * lr_decay**e and sparse_lr * lr_decay**e; 1 = constant.
        emb_l2: L2 penalty on the pooled embeddings of each batch (per example).
        class_weight: `balanced` weighs positives by n_neg/n_pos in the BCE.
        modalities: content vectors fed to the towers (`text`, `image`).
        projection: `cotrained` (end to end) or `two_step` (the paper's V0: towers
            pre-trained as autoencoders on the entity vectors, then frozen).
        pretrain_epochs: autoencoder epochs of the `two_step` towers.
        contrastive: add the SWING InfoNCE losses.
        w_item_item, w_user_user: the paper's w1, w2.
        tau: InfoNCE temperature.
        positive_sampling: `score` samples a SWING neighbour with p ~ score; `top1` takes the best.
        extra_negatives: M entities per InfoNCE term drawn uniformly from the catalogue
            each step and added to the in-batch negatives (mixed negative sampling; 0 = off).
        mask_positive_set: a candidate anywhere in the anchor's SWING top-K list is not a
            negative (default: only the anchor itself and its sampled positive are masked).
        logq_correction: subtract the log sampling probability of each InfoNCE candidate
            (estimated exactly from the positive sampler over the training rows).
        infonce_chunk_size: rows per block of the chunked InfoNCE (0 = one piece); same
            loss and gradients, less memory and time at large batches.
        patience: epochs without a better val AUC before stopping.
        min_epochs: epochs before early stopping may trigger.
        selection_metric: `auc` (maximise val AUC) or `fpr_at_recall:R` (minimise the val
            false-positive rate at the highest threshold whose val recall is >= R, 0 < R <= 1;
            the recall floor stops an all-negative model from winning on FPR alone).
        tensorboard: also write the step/epoch scalars to TensorBoard under `train/tensorboard/`.
        progress_bar: a rank-0 tqdm bar per epoch (only when stderr is a terminal).
        keep_checkpoints: last K checkpoints kept (the best is always kept).
        checkpoint_every_steps: also checkpoint every N global steps (0 = only at epoch ends).
        val_every_steps: also validate every N steps of each epoch (0 = only at epoch ends).
            Each validation is a candidate for selection: one that beats the best so far is
            checkpointed there and becomes the best model. `patience` still counts epochs:
            an epoch improved if any of its validations did.
        resume: continue from the newest checkpoint in `train/` when it holds an unfinished
            run of the same fingerprint (otherwise an unfinished `train/` is started afresh).
        stop_after_epoch: pause once this many epochs are done (0 = never); the checkpoint
            is written and a later run with `resume` continues. Not part of the fingerprint.
        stop_after_step: pause once this global step is done (0 = never), as above.
        device: `auto` (cuda when present), `cpu` or `cuda`.
        variant: the model. `full` is DLRREC as configured by `projection`,
            `contrastive` and `modalities`; the baselines go through the same data,
            selection and report path: `dlrm_content` (towers, BCE only: ignores
            `contrastive`), `dlrm` (ids, categorical and dense features, no content
            vectors: ignores `modalities` too) and `biased_mf` (user . item + user,
            item and global biases over the id tables only, BCE).
        id_dropout: cold-start ids (trainer/cold_start.py): > 0 gives the user_id and
            item_id tables one learned "cold" row; each training row's id is replaced by it
            with this probability, and ids absent from the training rows are scored with it.
        rating_weight: weight of the rating head's loss (0 = off): an affine map of each
            training row's logit regresses its standardised 1-5 rating (the label keeps
            only rating >= 4); val/test ratings are never read.
        score_test: score the test split with the val-selected model (the default). False
            seals it: no test figure is computed, printed or written, so tuning runs cannot
            peek. Not part of the fingerprint: a later `score_test=true` run of a sealed run
            scores its best checkpoint without training again (docs/evaluation.md).
    """

    run_dir: str
    seed: int = 0
    dataset: str = ""
    epochs: int = 20
    batch_size: int = 1024
    data_lanes: int = 8
    eval_batch_size: int = 8192
    embedding_dim: int = 32
    tower_hidden: int = 128
    tower_dim: int = 0
    dense_arch: list[int] = field(default_factory=lambda: [64])
    over_arch: list[int] = field(default_factory=lambda: [256, 64])
    dropout: float = 0.1
    lr: float = 0.01
    weight_decay: float = 0.0
    sparse_optimizer: Literal["auto", "adam", "rowwise_adagrad", "adagrad", "sgd"] = "auto"
    sparse_lr: float = 0.05
    sparse_weight_decay: float = 0.0
    lr_decay: float = 1.0
    history_tables: Literal["own", "shared", "none"] = "own"
    history_content: list[str] = field(default_factory=list)
    emb_l2: float = 0.01
    class_weight: Literal["none", "balanced"] = "balanced"
    modalities: list[str] = field(default_factory=lambda: ["text"])
    projection: Literal["cotrained", "two_step"] = "cotrained"
    pretrain_epochs: int = 30
    contrastive: bool = True
    w_item_item: float = 0.1
    w_user_user: float = 0.1
    tau: float = 0.2
    positive_sampling: Literal["score", "top1"] = "score"
    extra_negatives: int = 0
    logq_correction: bool = False
    mask_positive_set: bool = False
    infonce_chunk_size: int = 128
    patience: int = 3
    min_epochs: int = 1
    selection_metric: str = "auc"
    tensorboard: bool = True
    progress_bar: bool = True
    keep_checkpoints: int = 2
    checkpoint_every_steps: int = 0
    val_every_steps: int = 0
    resume: bool = True
    stop_after_epoch: int = 0
    stop_after_step: int = 0
    log_every: int = 50
    max_steps_per_epoch: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False
    variant: Literal["full", "dlrm_content", "dlrm", "biased_mf"] = "full"
    id_dropout: float = 0.0
    rating_weight: float = 0.0
    score_test: bool = True

    @property
    def uses_content(self) -> bool:
        """Whether the model has content towers (and reads the entity vectors)."""
        return self.variant in ("full", "dlrm_content") and bool(self.modalities)

    @property
    def uses_contrastive(self) -> bool:
        """Whether the SWING InfoNCE losses are on (and the pair tables are read)."""
        return self.variant == "full" and self.contrastive and self.uses_content

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "data_lanes", "eval_batch_size", "embedding_dim", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("keep_checkpoints", "checkpoint_every_steps", "val_every_steps", "stop_after_epoch", "stop_after_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.tower_dim <= self.embedding_dim:
            raise ConfigError(
                f"train.tower_dim: must be in [0, embedding_dim={self.embedding_dim}], got {self.tower_dim}"
            )
        for name in ("extra_negatives", "infonce_chunk_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        parse_selection_metric(self.selection_metric)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"train.dropout: must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ConfigError(f"train.id_dropout: must be in [0, 1), got {self.id_dropout}")
        if not self.rating_weight >= 0:
            raise ConfigError(f"train.rating_weight: must be >= 0, got {self.rating_weight}")
        if self.tau <= 0:
            raise ConfigError(f"train.tau: must be > 0, got {self.tau}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad:
            raise ConfigError(f"train.modalities: unknown modality {bad[0]!r} (known: text, image)")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError("train.modalities: duplicates")
        if len(set(self.history_content)) != len(self.history_content):
            raise ConfigError("train.history_content: duplicates")
        if self.projection == "two_step" and self.uses_contrastive:
            raise ConfigError(
                "train.contrastive: two_step freezes the towers after pre-training, so the "
                "contrastive losses would train nothing; set contrastive=false (the paper's V0 is BCE only)"
            )
        if self.lr <= 0 or self.sparse_lr <= 0:
            raise ConfigError("train.lr/sparse_lr: must be > 0")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train.lr_decay: must be in (0, 1], got {self.lr_decay}")


def parse_selection_metric(spec: str) -> tuple[str, float]:
    """`auc` -> ("auc", 0); `fpr_at_recall:R` -> ("fpr_at_recall", R) with 0 < R <= 1.

    Raises:
        ConfigError: naming `train.selection_metric` and the accepted forms.
    """
    if spec == "auc":
        return "auc", 0.0
    name, _, value = spec.partition(":")
    if name == "fpr_at_recall":
        try:
            r = float(value)
        except ValueError:
            r = float("nan")
        if 0.0 < r <= 1.0:
            return name, r
    raise ConfigError(
        f"train.selection_metric: {spec!r} is not `auc` or `fpr_at_recall:R` with 0 < R <= 1 "
        "(e.g. fpr_at_recall:0.5)"
    )
