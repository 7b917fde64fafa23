"""Pure detectors and line-loss arithmetic: plain values in and out; no Kafka, no metrics."""
