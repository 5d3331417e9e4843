#!/usr/bin/env bash
# The whole check: RabbitMQ up, dependencies installed, format, lint, types, tests (with the docs build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh
bash scripts/install.sh
. .venv/bin/activate
echo "== ruff format --check"; ruff format --check .
echo "== ruff check"; ruff check .
echo "== mypy (strict)"; mypy
echo "== pytest"; python -m pytest "$@"
