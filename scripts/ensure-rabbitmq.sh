#!/usr/bin/env bash
# Make sure a RabbitMQ node answers on 127.0.0.1:5672: start the local one, or install it (as root).
set -euo pipefail

listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if listening; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "RabbitMQ is not running on 127.0.0.1:5672 and not installed; install rabbitmq-server (needs root)." >&2
    exit 1
  fi
  echo "Installing rabbitmq-server ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
fi

echo "Starting RabbitMQ ..." >&2
if ! listening; then
  rabbitmq-server -detached || true
fi
# await_startup waits for the node to boot, as long as it is booting.
for _ in $(seq 1 60); do
  if rabbitmqctl await_startup --timeout 60 >/dev/null 2>&1 && listening; then
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start on 127.0.0.1:5672" >&2
exit 1
