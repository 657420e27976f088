"""Pre-flight: cross-stage checks run before training starts. What evaluate or export would refuse after the whole
train stage (a data set too small for a batch or the metrics, a reference split too small for KID, a feature
extractor that cannot load, such as Inception's weights offline, a model registry that cannot be written) fails
first, in one line, with the message those stages would give."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlparse

from pipeline.config import Params
from pipeline.errors import MetricsError, PreflightError

DONE_ENV = "PIPELINE_PREFLIGHT_DONE"  # set by pipeline.commands.launch for the stage it starts: the checks ran already
# The URI schemes MLflow has a model-registry store for (mlflow.tracking._model_registry.utils); a database URI's
# "+driver" suffix is dropped first.
REGISTRY_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                    "databricks-uc", "uc")


def check(params: Params, prepared_dir: str | Path | None, classifier_dir: str | Path | None = None) -> None:
    """Raise PreflightError with the message evaluate or export would give later, or return.

    The data checks need the prepared data and torch-fidelity (evaluate's), and are skipped without either. An
    extractor that resolves to the in-domain classifier is checked only once the classifier stage has run on this
    data (as `dvc repro` runs it before train: `classifier_dir` is the train stage's --classifier); until then the
    classifier stage will still run before evaluate.
    """
    if params.tracking.enabled:
        check_registry_uri(params.tracking.uri)
    if prepared_dir is None or not (Path(prepared_dir) / "meta.json").is_file():
        return
    from pipeline.data import check_size, read_meta

    count = read_meta(prepared_dir)["count"]  # the prepare stage's own check, against these params
    check_size(params.data, count["train"], count["ref"], params.train.batch_size, params.eval.min_reference_images())
    if importlib.util.find_spec("torch_fidelity") is None:  # a training-only machine: evaluate runs elsewhere
        return
    from pipeline.evaluation import classifier, extractors, resolve, scorer  # torch-fidelity: only with data

    ec, meta = params.eval, read_meta(prepared_dir)
    info = classifier.read_info(classifier_dir) if classifier_dir is not None else None
    trained = info is not None and info.get("data_hash") == meta["hash"]
    try:
        scored = ec.metrics
        if trained or resolve.extractor_kind(ec, meta) != "classifier":
            extractor = resolve.resolve_extractor(ec, meta, classifier_dir)
            scored, _ = scorer.scored_metrics(ec.metrics, extractor)
            scorer.check_count(ec, scored, resolve.num_samples(ec, extractor), "the generated set")
            extractors.check_loads(extractor, ec.download_timeout_seconds)  # Inception offline: refused now
        scorer.check_count(ec, scored, meta["count"]["ref"], "the reference split", generated=False)
    except MetricsError as e:  # evaluate's own check and message, one class for the train stage to report
        raise PreflightError(f"{e} (found before training: the evaluate stage would fail on it)") from None


def check_registry_uri(uri: str) -> None:
    """Export registers the model at tracking.uri: its scheme must have a model registry, and a SQLite file's
    directory must exist (SQLite creates the file, not its directory)."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in REGISTRY_SCHEMES:
        raise PreflightError(f"tracking.uri={uri}: MLflow has no model registry for {scheme}: URIs, and export "
                             "registers the model there; use sqlite:///mlflow.db, a database URI or an http(s) server")
    if scheme == "sqlite" and uri.startswith("sqlite:///"):  # sqlite:// alone is in memory
        from pipeline.tracking.store import resolve_uri  # a relative path is the main repository's

        path = Path(resolve_uri(uri)[len("sqlite:///"):].split("?")[0])
        if not path.parent.is_dir():
            raise PreflightError(f"tracking.uri={uri}: directory {path.parent} does not exist; create it or fix "
                                 "the path")
