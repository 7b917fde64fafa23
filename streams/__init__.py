"""gridwatch stream processing: Faust workers, the local Kafka broker and their settings."""
