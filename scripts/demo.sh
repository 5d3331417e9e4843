#!/usr/bin/env bash
# The main job: RabbitMQ up, aqueue installed, a worker plus a producer sending example tasks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh
bash scripts/install.sh
exec .venv/bin/python examples/demo/run.py
