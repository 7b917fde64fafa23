"""Local tooling: the Kafka and PostgreSQL launchers, the local run and record/replay."""
