"""`gan-tracking sync`: upload the spools that stages left while the MLflow server was away."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import runner
from pipeline.errors import TrackingError, first_line
from pipeline.tracking import auth, replay, store


def sync(spool: Path | None = None, uri: str | None = None) -> list[str]:
    """Replay every run spool under `spool` (default: the main repository's); one line per run."""
    from mlflow.tracking import MlflowClient

    root = Path(spool) if spool else store.spool_root()
    lines = []
    for d in replay.spool_dirs(root):
        try:
            n = replay.sync_dir(d, lambda u: MlflowClient(tracking_uri=store.resolve_uri(u)), uri)
        except Exception as e:  # noqa: BLE001 - the server is still away, or refuses this user: keep the spool
            why = auth.refusal(e, uri or "the spool's server", f"the records of run {d.name}",
                               "EDIT on the run's experiment") or f"{type(e).__name__}: {first_line(e)}"
            raise TrackingError(f"run {d.name}: MLflow did not take its records ({why}); they stay in {d}, run "
                                "gan-tracking sync again later") from None
        lines.append(f"run {d.name}: a running stage holds this spool; it sends the records itself" if n is None
                     else f"run {d.name}: uploaded {n} records")
    return lines or [f"nothing to upload: no spool under {root}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gan-tracking", description="Tracking chores.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="upload the tracking records that stages kept while MLflow was away")
    s.add_argument("--spool", type=Path, default=None, help=f"spool directory (default: <repo>/{store.SPOOL_DIR})")
    s.add_argument("--uri", default=None, help="send to this tracking URI instead of the one each spool records")
    args = p.parse_args(argv)
    for line in sync(args.spool, args.uri):
        print(line)


def cli_main() -> None:
    """Console script entry point (`gan-tracking`)."""
    runner.run(main)


if __name__ == "__main__":
    cli_main()
