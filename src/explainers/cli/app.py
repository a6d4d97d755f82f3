"""The Typer application object; command modules attach their commands to it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="explainers",
    help="Learned explainers (LTE/pLTE, LETA), baselines and evaluation for image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pretrain_app = typer.Typer(help="Pre-train learned explainers (pLTE, LETA).", no_args_is_help=True)
app.add_typer(pretrain_app, name="pretrain")
import_app = typer.Typer(help="Import checkpoints made by other code (e.g. the LTE reference).", no_args_is_help=True)
app.add_typer(import_app, name="import")
