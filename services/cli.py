"""The ``moodreel`` command line. Each area registers its commands here; heavy imports stay
inside the commands so ``moodreel --help`` is instant."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Moodreel: emotion and sentiment in video.")
sagemaker_app = typer.Typer(no_args_is_help=True, help="Train and deploy on AWS SageMaker.")
app.add_typer(sagemaker_app, name="sagemaker")
