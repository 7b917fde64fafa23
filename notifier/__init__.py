"""The notifier service: delivers the alerts topic to the duty webhook."""
