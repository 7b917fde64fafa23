"""gridwatch stream processing: the Faust worker, its Kafka I/O, contracts, metrics and settings."""
